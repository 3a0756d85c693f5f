"""`python -m pipeline.doctor`: proves that a node or a cluster can train a config, and names what
will bound its speed, before a long job starts (pipeline/doctor/cli.py shows the commands).

One module per section, each measuring on every rank and judging on rank 0, called in order by
examine.py (one named step per section):
  environment.py  torch's CUDA build vs the driver, GPUs vs ranks, bf16/fp16, NCCL, DALI,
                  pillow-simd + AVX2, disk for checkpoints, memory and /dev/shm, cores per rank
  probes.py       the facts environment.py judges, probed on every rank
  collectives.py  all-reduce bus bandwidth at the model's gradient size: training backend, within
                  and across nodes, the gloo side group; the slowest rank and link
  data.py         cold read MB/s of the train dir; decode + augment images/s of every backend
                  the data and the machine allow, at the configured workers
  model.py        the trainer's optimizer step on synthetic data, alone and inside DDP; peak memory
  verdict.py      which of disk, decode, all-reduce, compute bounds the run, and what moves it
  report.py       the table and doctor.json;  budget.py  --quick vs full measurement lengths

doctor.json (schema "imagenet-doctor/1"):
  {"schema", "created_utc", "argv", "quick", "elapsed_s",
   "status": "ok" | "warn" | "fail", "exit_code": 0 | 1,
   "failures": ["section/check: one line", ...],
   "world": {"world_size", "ranks_per_node", "nodes", "backend", "device", "hosts", "devices",
             "notes": {section: str}},
   "sections": {"environment" | "collectives" | "data" | "model" | "verdict":
                [{"section", "name", "status": "ok"|"warn"|"fail"|"skip"|"info",
                  "summary": str, "values": {...numbers...}}, ...]},
   "verdict": {"bound": "disk"|"decode"|"all-reduce"|"compute"|null,
               "rates_images_per_s_per_rank": {"disk", "decode", "all-reduce", "compute"},
               "expected_images_per_s", "change": {"text", "overrides": [...]} | null,
               "comm_hook": null},
   "config": {the resolved config}}
"""
