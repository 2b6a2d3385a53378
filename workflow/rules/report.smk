rule report:
    input:
        trials="results/studies/{study}/trials.parquet",
        best="results/studies/{study}/best.json",
        resolved="results/studies/{study}/resolved.yaml",
        study=study_file,
    output:
        report(
            "results/reports/{study}.html",
            caption="../report/study.rst",
            category="Study cards",
            labels={"study": "{study}"},
        ),
    params:
        set_args=study_set_args,
    log:
        "logs/report/{study}.log",
    threads: 1
    shell:
        "studyflow report results/studies/{wildcards.study} --study {input.study} {params.set_args}"
        " --out {output} 2> {log}"
