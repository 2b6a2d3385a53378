# One Dask worker process per thread; the study server runs on the local scheduler.
rule optimize:
    input:
        unpack(optimize_inputs),
    output:
        trials="results/studies/{study}/trials.parquet",
        best="results/studies/{study}/best.json",
        resolved="results/studies/{study}/resolved.yaml",
    params:
        config_hash=study_config_hash,
        set_args=study_set_args,
    log:
        "logs/optimize/{study}.log",
    threads: optimize_threads
    resources:
        mem_mb=2000,
        cpus_per_task=optimize_threads,
        runtime=optimize_runtime_minutes,
    shell:
        "studyflow optimize {input.study} {params.set_args} --config config/config.yaml"
        " --results results --workers {threads} 2> {log}"
