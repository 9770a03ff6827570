#!/usr/bin/env bash
# A Slurm job array: shard i of 8 of a `lion eval --model` run, one array task each.
#   sbatch deploy/slurm-eval.sh        then, when all tasks are done:
#   lion merge --out preds.json preds.shard-*-of-8.jsonl && lion eval --task caption --pred preds.json --gt captions_val2014.json
# The shard comes from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (minus SLURM_ARRAY_TASK_MIN);
# a task that is requeued resumes from its preds.shard-I-of-8.jsonl.partial.
#SBATCH --job-name=lion-eval
#SBATCH --array=0-7
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
set -euo pipefail
lion eval --task caption --gt captions_val2014.json --images coco/ --model "$LION_HOME/models/lion-flant5-xl" \
    --pred-out preds.json --batch-size 8
