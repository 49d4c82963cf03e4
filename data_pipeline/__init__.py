"""data_pipeline: offline video decoding, VAE codecs, latent shard writing/reading and S3 I/O."""
