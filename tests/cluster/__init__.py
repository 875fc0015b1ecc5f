"""A local SLURM cluster (Debian packages, no systemd) for the tests that run the workflow on SLURM."""
