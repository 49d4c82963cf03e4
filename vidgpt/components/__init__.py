"""The trainer's components: each owns one job of training, its `[section]` config dataclass where it
has settings, and `state_dict`/`load_state_dict` where it has state. `vidgpt.trainer` builds them and runs
the loop.

- `data`: dataset checks, the train and validation loaders, batches on the device (`[data]`);
- `engine`: precision, the DeepSpeed engine, AdamW and the lr schedule (`[optimizer]`, `[training]`);
- `seeds`: every random stream derived from one seed formula;
- `throughput`: step time, samples and tokens per second, MFU, memory;
- `step_guard`: the stop flag of preemption signals, and skipping non-finite steps;
- `loss_log`: losses.jsonl, one line per optimizer step, kept across resumes;
- `tensorboard`: scalars on rank 0 and the console (`[logging]`);
- `validation`: the held-out loss and samples during training (`[eval]`);
- `training_samples`: the samples made during training and their quality figures;
- `checkpointing`: save, restore and conversion of sharded checkpoints.
"""
