rule stage:
    output:
        data="results/data/{dataset}.parquet",
        manifest="results/data/{dataset}.manifest.json",
    params:
        spec=dataset_spec_json,
    log:
        "logs/stage/{dataset}.log",
    threads: 1
    shell:
        "studyflow stage {wildcards.dataset} --spec {params.spec:q} --out results/data 2> {log}"
