"""vlp_jax: vision-language pretraining that does not punish false negatives."""
