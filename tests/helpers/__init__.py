"""What several test modules share: the tiny workflow and its runs (workflow), extraction of small
stores and damaging files (stores), textbook references (reference), files in real on-disk
formats (files), the optional RobustBench extra (external) and a one-node SLURM cluster
(slurm_cluster). Test modules import from here, never from one another."""
