# prepare_data: every dataset the later stages read, as JSONL under results/{model}/data/.


rule prepare_data:
    input:
        cfg="results/{model}/config/data.json",
        prompts=PROMPT_FILES,
    output:
        directory("results/{model}/data"),
    log:
        "logs/{model}/prepare_data.log",
    benchmark:
        "logs/{model}/prepare_data.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        script=script("prepare_data"),
        prompts_dir=lambda wc, input: os.path.dirname(input.prompts[0]),
    shell:
        "$SPADEC_PY {params.script} --config {input.cfg} --prompts {params.prompts_dir}"
        " --out {output} > {log} 2>&1"
