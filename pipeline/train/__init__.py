"""Training: `python -m pipeline.train` (see pipeline/train/cli.py for the commands).

Modules: cli (arguments, modes, exit codes), trainer (the Trainer), step (precision, autocast,
one optimizer step), resume (training state, checkpoint choice, resume points), signals (stop
flags), meters (train metrics and progress), run_info (what each launch records).
"""
