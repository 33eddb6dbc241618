from lmcompose.testing import InterventionConformance


class Test{{Class}}Conformance(InterventionConformance):
    intervention = "{{name}}"
    config = {"scale": 0.05}
