rule summarize:
    input:
        best=expand(results("studies/{study}/best.json"), study=STUDIES),
        trials=expand(results("studies/{study}/trials.parquet"), study=STUDIES),
    output:
        studies=report(
            results("summary/studies.parquet"),
            caption="../report/summary.rst",
            category="Summary",
        ),
        best_params=report(
            results("summary/best_params.csv"),
            caption="../report/best_params.rst",
            category="Summary",
        ),
        artifacts=results("summary/artifacts.csv"),
        index=results("reports/index.html"),
    params:
        study_dirs=expand(results("studies/{study}"), study=STUDIES),
        out=results("summary"),
        pages=index_page_args(),
    log:
        logs("summarize.log"),
    threads: 1
    shell:
        "studyflow summarize {params.study_dirs:q} --out {params.out:q} --index {output.index:q}"
        " {params.pages} > {log:q} 2>&1"
