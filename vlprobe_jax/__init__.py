"""vlprobe-jax: probe what vision-language models reward (Ma et al. 2022) in JAX/Flax."""
