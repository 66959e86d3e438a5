"""Command-line front ends, one module per program: argument parsing and output, nothing else."""
