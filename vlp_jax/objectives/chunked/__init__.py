"""The global-batch contrastive loss in memory-bounded chunks: the dense loss and regulators, block by block.

`chunked_contrastive_loss` computes exactly what `RegulatorChain` (objectives/regulate.py) followed by
`contrastive_loss` (objectives/contrastive.py) compute, without ever holding a [B, B] matrix:

- `jax.shard_map` over the mesh's batch axes ('data', 'fsdp'): each device keeps its b = B / D rows
  (anchors) and the candidates travel. `comm='ring'` (default) passes each device's [b, E] block
  around the ring with `ppermute`, D hops; `comm='all_gather'` gathers all [B, E] candidates once.
  Within a block the columns are taken `block_size` at a time, so the largest temporaries are
  [b, block_size] tiles (default: about TILE_ELEMENTS elements).
- Two sweeps forward, one backward (`jax.custom_vjp`, tiles recomputed, nothing [B, B] saved):
  1. statistics (no gradient): per row and direction the diagonal cosine, the top-2 off-diagonal
     cosines with their global column and (cosine discriminator) the discriminator's cosine there,
     and SRCL's logsumexp of -log s_ik over k != i. Then, on [B] vectors: SRCL's row means, COSMO's
     j1/j2, q (an ITM discriminator is called here, with the j1 it needs), conversions, metrics.
  2. loss: online logsumexp of z + log_w (softmax) or the summed terms (sigmoid); the targets y are
     linear in the per-row sums, so smoothing over the kept candidates (whose count n_i is only known
     at the end) is sum_j y0_ij z_ij and sum_j valid_ij z_ij accumulated apart. GRIT-VLP's
     consistency KL comes from the same pass: both directions' raw logsumexps and E_p[z' - z] online.
  3. backward: each tile recomputed from the saved per-row logsumexps; the candidates' gradients
     travel home with their block (ring) or are reduce-scattered (all_gather).
- The reference model's (SRCL) and the cosine discriminator's (COSMO) embeddings travel with the
  training model's, so their cosines are formed per tile too.

Frozen models answer with embeddings instead of [B, B] cosines: see `ask_embeddings`.

Unsupported: ALBEF's momentum candidates (`image_candidates` / `text_candidates`, [B + Q] keys),
asserted. The ground-truth probe (probes.py) reads SRCL's [B, B] log_w: the chunked loss reports
SRCL's per-row statistic (`aux['srcl']['log_mean']`) from which any log_w_ij follows
(`srcl_log_w_from_rows`), and with `dense_diagnostics=True` it also rebuilds the [B, B] log_w for
the probe (synthetic-data diagnostics, small B only: the probe's own mask is [B, B]).

Modules: plan (static settings, tile size, mesh), sweep (ring / all-gather over column chunks),
tiles (one tile's cosines and regulation), statistics (pass 1), forward (pass 2), backward (pass 3),
loss_parts (the custom VJP joining them), frozen_answers (`ask_embeddings`), loss (the entry point).
"""

from vlp_jax.objectives.chunked.frozen_answers import ask_embeddings
from vlp_jax.objectives.chunked.loss import chunked_contrastive_loss, srcl_log_w_from_rows
from vlp_jax.objectives.chunked.plan import COMMS, DIRECTIONS, TILE_ELEMENTS, default_block_size

__all__ = [
    'COMMS',
    'DIRECTIONS',
    'TILE_ELEMENTS',
    'ask_embeddings',
    'chunked_contrastive_loss',
    'default_block_size',
    'srcl_log_w_from_rows',
]
