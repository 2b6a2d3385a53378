rule report:
    input:
        trials=results("studies/{study}/trials.parquet"),
        best=results("studies/{study}/best.json"),
        resolved=results("studies/{study}/resolved.yaml"),
        settings=study_report_settings,
    output:
        report(
            results("reports/{study}.html"),
            caption="../report/study.rst",
            category="Study cards",
            labels={"study": "{study}"},
        ),
    params:
        study=study_file,
        set_args=study_set_args,
        study_dir=results("studies/{study}"),
    log:
        logs("report/{study}.log"),
    threads: 1
    shell:
        "studyflow report {params.study_dir:q} --study {params.study:q} {params.set_args}"
        " --out {output:q} > {log:q} 2>&1"
