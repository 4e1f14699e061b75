# SpaDec pipeline: from a base model to the paper's speedup tables.
# Stages live in rules/*.smk; all logic lives in the `spadec` package.
import os

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless the command line names an experiment: configs are whole
# experiments, never layered on this one (Snakemake would merge the two `models` maps).
if not workflow.config_settings.configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


include: "rules/common.smk"
include: "rules/config.smk"
include: "rules/data.smk"
include: "rules/base.smk"
include: "rules/dllm.smk"
include: "rules/eagle.smk"
include: "rules/medusa.smk"
include: "rules/predictor.smk"
include: "rules/eval.smk"


report: "report/workflow.rst"


rule all:
    default_target: True
    input:
        expand("results/{model}/data", model=MODELS),
        expand("results/{model}/base", model=MODELS),
        dllm_metrics(),
        rules.tables.output,
    localrule: True
