rule stage:
    input:
        unpack(stage_inputs),
    output:
        data=results("data/{dataset}.parquet"),
        manifest=results("data/{dataset}.manifest.json"),
    params:
        spec=dataset_spec_json,
        out=results("data"),
    log:
        logs("stage/{dataset}.log"),
    threads: 1
    shell:
        "studyflow stage {wildcards.dataset:q} --spec {params.spec:q} --out {params.out:q} > {log:q} 2>&1"
