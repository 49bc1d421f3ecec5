"""Layer 7, workflow: the papermill runner, the SLURM/Snakemake plan and the HTML report."""
