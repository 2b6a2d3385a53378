# The study matrix (config `matrix:`): each problem's reference, computed once before its
# studies run (their `optimize` jobs take it as input), and the table and page comparing every
# (problem, method). The studies themselves are ordinary `optimize`/`report` jobs.
rule matrix_reference:
    input:
        unpack(reference_inputs),
    output:
        results("matrix/references/{problem}.json"),
    params:
        spec=reference_spec_json,
    log:
        logs("matrix_reference/{problem}.log"),
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "studyflow matrix reference --problem {wildcards.problem} --spec {params.spec:q}"
        " --data {input.data:q} --out {output:q} > {log:q} 2>&1"


rule matrix_summary:
    input:
        best=expand(results("studies/{study}/best.json"), study=MATRIX_STUDIES),
        trials=expand(results("studies/{study}/trials.parquet"), study=MATRIX_STUDIES),
    output:
        table=report(
            results("summary/matrix.parquet"),
            caption="../report/matrix.rst",
            category="Summary",
        ),
        page=report(
            results("reports/matrix.html"),
            caption="../report/matrix.rst",
            category="Summary",
        ),
    params:
        study_dirs=expand(results("studies/{study}"), study=MATRIX_STUDIES),
        pairs=matrix_pairs_json(),
    log:
        logs("matrix_summary.log"),
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "studyflow matrix summary {params.study_dirs:q} --pairs {params.pairs:q}"
        " --table {output.table:q} --page {output.page:q} > {log:q} 2>&1"
