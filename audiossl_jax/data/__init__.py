"""Data layer: built-in demo data (`demo`), `audiossl prep` (`sources` -> `audio_io` -> `prep` ->
`records` shards + `manifest`, `tfds_metadata`), the tf.data input pipeline (`pipeline`), JAX
augmentations (`augment`) and the CLI sub-commands `prep` and `demo-data` (`cli`). See docs/data.md."""
