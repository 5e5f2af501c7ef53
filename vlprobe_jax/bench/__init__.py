"""The reward-throughput benchmark (configs/bench_reward.py): the compiled SCST step and its
parts against a reference PyTorch pipeline (torch imported only by `torch_reference`), with a
profile summary. Nothing on the training path imports this package."""
