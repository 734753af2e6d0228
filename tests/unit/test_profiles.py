import pytest

from decoding.proxy_tuning import AUX_MODELS_CONTEXT
from server.config import ProfileConfig
from server.corrections import merge_correction
from server.errors import APIError
from server.profiles import Catalog, Profile, ProfileError, load_profiles

CONTEXT = {AUX_MODELS_CONTEXT: {"e", "a"}}
TUNED = {"proxy_tuning": {"expert": "e", "anti_expert": "a", "alpha": 0.5}}


def test_request_fields_override_profile_defaults_key_by_key():
    assert merge_correction(TUNED, {"proxy_tuning": {"alpha": 2.0}}) == {
        "proxy_tuning": {"expert": "e", "anti_expert": "a", "alpha": 2.0}
    }
    assert merge_correction(TUNED, {}) == TUNED
    assert merge_correction({}, TUNED) == TUNED


def test_profiles_are_checked_at_start_up():
    profiles = load_profiles({"tuned": ProfileConfig(correction=TUNED)}, "base", CONTEXT)
    assert profiles["tuned"].correction == TUNED
    with pytest.raises(ProfileError, match="served model's id"):
        load_profiles({"base": ProfileConfig()}, "base", CONTEXT)
    with pytest.raises(ProfileError, match="profiles.p.model"):
        load_profiles({"p": ProfileConfig(model="other")}, "base", CONTEXT)
    bad = {"proxy_tuning": {"expert": "nope", "anti_expert": "a"}}
    with pytest.raises(ProfileError, match=r"profiles\.p\.correction\.proxy_tuning\.expert"):
        load_profiles({"p": ProfileConfig(correction=bad)}, "base", CONTEXT)


def test_lora_adapters_are_model_ids_only_beside_a_public_served_model():
    tuned = Profile("tuned", {})
    public = Catalog("m", {"tuned": tuned})
    assert public.resolve("lora", adapters={"lora"}) == ("lora", None)
    assert public.resolve("tuned", adapters={"lora"}) == ("tuned", tuned)
    with pytest.raises(APIError) as err:
        public.resolve("lora")  # not (or no longer) loaded
    assert err.value.status == 404
    # A hidden served model hides its adapters too: they would step around the profiles.
    hidden = Catalog("m", {"tuned": tuned}, base_public=False)
    with pytest.raises(APIError) as err:
        hidden.resolve("lora", adapters={"lora"})
    assert err.value.status == 404
