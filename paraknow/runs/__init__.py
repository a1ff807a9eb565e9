"""The runs layer: training and evaluation, run directories, the fine-tuning queue, background jobs
and executors (this machine or Ray). Imports the transfer layer and the core."""
