rule report:
    input:
        trials="results/studies/{study}/trials.parquet",
        best="results/studies/{study}/best.json",
        resolved="results/studies/{study}/resolved.yaml",
    output:
        report(
            "results/reports/{study}.html",
            caption="../report/study.rst",
            category="Study cards",
            labels={"study": "{study}"},
        ),
    log:
        "logs/report/{study}.log",
    threads: 1
    shell:
        "studyflow report results/studies/{wildcards.study} --out {output} 2> {log}"
