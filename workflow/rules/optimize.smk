# One Dask worker process per thread (per `cluster.trial_threads` threads); the study server
# runs on the local scheduler. The input is the study's config hash, not its file: only an edit
# that changes the trials re-runs it.
rule optimize:
    input:
        unpack(optimize_inputs),
    output:
        trials=results("studies/{study}/trials.parquet"),
        best=results("studies/{study}/best.json"),
        resolved=results("studies/{study}/resolved.yaml"),
    params:
        config_hash=study_config_hash,
        study=study_file,
        set_args=study_set_args,
        reference_args=study_reference_args,
        run_config=run_config_file(WORKFLOW),
        results=RESULTS,
        workers=optimize_workers,
    log:
        logs("optimize/{study}.log"),
    threads: optimize_threads
    resources:
        mem_mb=2000,
        cpus_per_task=optimize_threads,
        runtime=optimize_runtime_minutes,
        gpu=optimize_gpus,  # a local cluster of one worker per GPU: SLURM's --gpus
    shell:
        "studyflow optimize {params.study:q} {params.set_args} {params.reference_args}"
        " --config {params.run_config:q}"
        " --results {params.results:q} --workers {params.workers} > {log:q} 2>&1"
