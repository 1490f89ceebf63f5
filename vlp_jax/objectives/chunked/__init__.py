"""The global-batch contrastive loss in memory-bounded chunks: the dense loss and its regulators, block by block.

`chunked_contrastive_loss` computes exactly what a RegulatorChain's dense (one-tile) path followed by
`contrastive_loss` (objectives/contrastive.py) computes, without ever holding a [B, B] matrix:

- `jax.shard_map` over the mesh's batch axes ('data', 'fsdp'): each device keeps its b = B / D rows
  (anchors) and the candidates travel. `comm='ring'` (default) passes each device's [b, E] block
  around the ring with `ppermute`, D hops; `comm='all_gather'` gathers all [B, E] candidates once.
  Within a block the columns are taken `block_size` at a time, so the largest temporaries are
  [b, block_size] tiles (default: about TILE_ELEMENTS elements).
- Two sweeps forward, one backward (`jax.custom_vjp`, tiles recomputed, nothing [B, B] saved):
  1. statistics (no gradient): per row and direction the diagonal cosine, the hardest negative, and
     each regulator's own per-row statistics (Regulator.update_rows). Then, on [B] vectors, the
     regulators' decisions (Regulator.decide; a scoring function such as an ITM discriminator is
     called here, with the indices it needs) and the metrics.
  2. loss: online logsumexp of z + log_w (softmax) or the summed terms (sigmoid), each tile's
     (log_w, y0) from Regulator.apply; the targets are linear in the per-row sums, so a uniform mix over
     the kept candidates (whose count n_i is only known at the end) is sum_j y0_ij z_ij and
     sum_j valid_ij z_ij accumulated apart. GRIT-VLP's consistency term comes from the same pass:
     both directions' raw logsumexps and E_p[z' - z] online.
  3. backward: each tile recomputed from the saved per-row logsumexps; the candidates' gradients
     travel home with their block (ring) or are reduce-scattered (all_gather).
- Frozen models asked for cosines answer with embeddings, which travel with the training model's,
  so their cosines are formed per tile too.

Unsupported: ALBEF's momentum candidates (`image_candidates` / `text_candidates`, [B + Q] keys),
asserted. With `dense_diagnostics=True` the regulators' [B, B] outputs are rebuilt for the
ground-truth probe (synthetic-data diagnostics, small B only).

Modules: plan (static settings, tile size, mesh), sweep (ring / all-gather over column chunks),
tiles (one tile's cosines and regulation), statistics (pass 1), forward (pass 2), backward (pass 3),
loss_parts (the custom VJP joining them), loss (the entry point).
"""

from vlp_jax.objectives.chunked.loss import chunked_contrastive_loss
from vlp_jax.objectives.chunked.plan import COMMS, DIRECTIONS, TILE_ELEMENTS, default_block_size

__all__ = ['COMMS', 'DIRECTIONS', 'TILE_ELEMENTS', 'chunked_contrastive_loss', 'default_block_size']
