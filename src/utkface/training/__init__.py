"""The collaborators of `utkface.training.train`'s loop, one concern each.

- `distributed.py`: ranks, devices, the process group, data prepared once per cluster
- `sampling.py`: which rows of the train split each rank sees in each step, and the per-step seeds
- `budget.py`: the number of steps that fits a `--time-budget`, and the speed it is fitted to
- `validation.py`: scoring the weights and their average on `val` (and `test` at the end)
- `saver.py`: `last.pt` / `best.pt` keeping and the exact-resume state
- `epoch_log.py`: `metrics.csv`, `curves.png` and the console summary line
- `interrupts.py`: Ctrl-C waits for the optimizer step under way
- `trace.py`: an opt-in per-rank record of what each rank saw (for the multi-node test)
- `seed_pair.py`: the `seed` preset's two CNNs, one `train` after the other
"""
