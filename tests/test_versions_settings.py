"""A reinterpret index written before a setting existed sees no change while it keeps its default."""

from repint.config import demo_config
from repint.flows.spec import build_spec
from repint.storage import fingerprint_params
from repint.tasks.versions import version_fingerprints


def test_a_later_setting_at_its_default_does_not_change_the_settings_fingerprint(tmp_path):
    spec = build_spec(demo_config(), tmp_path)
    before = version_fingerprints.fn(spec)["settings"]
    # what versions.json recorded before `evaluation.fallback` and `interpretation.solver` existed: the
    # sections without them
    model = {k: v for k, v in spec.model.items() if k not in ("checkpoint", "checkpoint_sha256")}
    # (the fields of af5e32f's EvaluationConfig, before the faithfulness metrics, written out)
    evaluation = {k: v for k, v in spec.evaluation.model_dump().items()
                  if k in ("methods", "keep_fraction", "case_studies", "ace_images", "runs", "variants")}
    assert list(evaluation) == ["methods", "keep_fraction", "case_studies", "ace_images", "runs", "variants"]
    interpretation = {k: v for k, v in spec.interpretation.model_dump().items() if k != "solver"}
    assert before == fingerprint_params(model, interpretation, evaluation)
    same_class = spec.evaluation.model_copy(update={"fallback": "nearest-same-class"})
    other = spec.model_copy(update={"evaluation": same_class})
    assert version_fingerprints.fn(other)["settings"] != before
    seed = spec.model_copy(update={"interpretation": spec.interpretation.model_copy(update={"seed": 1})})
    assert version_fingerprints.fn(seed)["settings"] != before
    authors = spec.model_copy(update={"interpretation": spec.interpretation.model_copy(update={"solver": "authors"})})
    assert version_fingerprints.fn(authors)["settings"] != before
    fewer = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"metrics": ["ad-ai"]})})
    assert version_fingerprints.fn(fewer)["settings"] != before
