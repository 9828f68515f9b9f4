"""Config loading: presets, dotted overrides, and errors that name the key, the value and the choices."""

import pytest

from armd_scale.config import Config, ConfigError, config_from_dict, dump_config, list_presets, load_config


def test_default_preset_loads_and_validates():
    cfg = load_config()
    assert isinstance(cfg, Config)
    for name in ("arch", "vocab_size", "n_layers", "d_model", "n_heads", "max_seq_len", "attention_backend"):
        assert hasattr(cfg.model, name)
    assert "tiny-cpu" in list_presets()


def test_every_preset_loads():
    for name in list_presets():
        load_config(name)


def test_dotted_overrides_are_typed():
    cfg = load_config(
        overrides=[
            "model.n_layers=6",
            "train.lr=1e-4",
            "train.order.kind=sbp",
            "train.order.streams=[1,2]",
            "log.wandb=off",
            "data.val=null",
            "model.tie_embeddings=false",
        ]
    )
    assert cfg.model.n_layers == 6 and isinstance(cfg.model.n_layers, int)
    assert cfg.train.lr == 1e-4
    assert cfg.train.order.kind == "sbp" and cfg.train.order.streams == [1, 2]
    assert cfg.log.wandb == "off" and cfg.data.val is None and cfg.model.tie_embeddings is False


def test_yaml_file_path(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n_layers: 2\n")
    cfg = load_config(path)
    assert cfg.model.n_layers == 2
    assert load_config(path, ["model.n_layers=8"]).model.n_layers == 8


def test_data_train_is_one_url_or_a_mixture():
    assert load_config(overrides=["data.train=s3://b/owt/train"]).data.train == "s3://b/owt/train"
    cfg = load_config(overrides=["data.train=[{path: a/train, weight: 0.7}, {path: b/train, weight: 0.3, epochs: 2}]"])
    assert [(s.path, s.weight, s.epochs) for s in cfg.data.train] == [("a/train", 0.7, 1.0), ("b/train", 0.3, 2.0)]
    assert config_from_dict(cfg.to_dict()) == cfg  # a checkpoint's saved config loads again


def test_round_trip_through_dict():
    cfg = load_config(overrides=["model.d_model=64"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert "d_model: 64" in dump_config(cfg)


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("model.n_layerz=4", "unknown key 'model.n_layerz'"),
        ("modle.n_layers=4", "unknown key 'modle'"),
        ("model.arch=gpt", "'model.arch'='gpt' is not allowed; choose one of 'armd', 'ar', 'mdlm'"),
        ("model.n_layers=four", "'model.n_layers'='four' must be an integer"),
        ("model.n_layers=2.5", "'model.n_layers'=2.5 must be an integer"),
        ("model.d_model=130", "model.d_model=130 must be divisible by model.n_heads=4"),
        ("model.n_heads=0", "model.n_heads=0 must be > 0"),
        ("parallel.zero_stage=4", "'parallel.zero_stage'=4 is not allowed"),
        ("train.micro_batch_size=5", "must be a multiple of train.micro_batch_size=5"),
        ("train.order.kind=zigzag", "'train.order.kind'='zigzag' is not allowed"),
        ("log.wandb=maybe", "choose one of 'off', 'offline', 'online', 'auto'"),
        ("model.tie_embeddings=yes please", "must be true or false"),
        ("data.seq_len=4096", "data.seq_len=4096 exceeds model.max_seq_len"),
        ("model.n_layers", "must look like key.sub=value"),
        ("model.n_layers.x=1", "'n_layers' is a value, not a group"),
        ("data.train=[{path: a, wieght: 2}]", "unknown key 'data.train[0].wieght'"),
        ("data.train=[{path: a}, {path: b, weight: 0}]", "data.train[1].weight=0.0 must be a number > 0"),
        ("data.train=[{path: a}, {weight: 1}]", "data.train[1].path is missing"),
        ("data.train=[{path: a, epochs: many}]", "'data.train[0].epochs'='many' must be a number"),
        ("data.train=[{path: builtin:pydoc}]", "data.train[0].path='builtin:pydoc': a mixture takes shard sets only"),
        ("data.train=[{path: a}, {path: a/}]", "data.train[1].path='a/' repeats data.train[0]"),
        ("data.train=[]", "data.train=[] names no shard set"),
        ("data.shuffle_chunks=0", "data.shuffle_chunks=0 must be > 0"),
    ],
)
def test_invalid_values_name_key_value_and_choices(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "override,fragment",
    [
        # each numeric field with a meaningful range refuses values outside it, naming key and value
        ("train.grad_clip=-1", "train.grad_clip=-1.0 must be >= 0"),  # ZeRO-0 used to ascend the gradient
        ("train.beta1=1.5", "train.beta1=1.5 must be in [0, 1)"),
        ("train.beta2=1.0", "train.beta2=1.0 must be in [0, 1)"),
        ("train.beta1=-0.1", "train.beta1=-0.1 must be in [0, 1)"),
        ("train.eps=-1", "train.eps=-1.0 must be > 0"),
        ("train.eps=0", "train.eps=0.0 must be > 0"),
        ("train.lr=nan", "'train.lr'='nan' must be a finite number"),
        ("train.lr=.inf", "'train.lr'=inf must be a finite number"),
        ("train.lr=0", "train.lr=0.0 must be > 0"),
        ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be >= 0"),
        ("train.min_lr_ratio=1.5", "train.min_lr_ratio=1.5 must be in [0, 1]"),
        ("train.max_bad_steps=0", "train.max_bad_steps=0 must be > 0"),
        ("train.eval_batches=0", "train.eval_batches=0 must be > 0"),
        ("train.keep_last=0", "train.keep_last=0 must be > 0"),
        ("train.keep_every=-1", "train.keep_every=-1 must be >= 0"),
        ("train.spike_factor=0.5", "train.spike_factor=0.5 must be >= 1"),
        ("train.sample_at_end=-1", "train.sample_at_end=-1 must be >= 0"),
        ("train.stop_at_step=-5", "train.stop_at_step=-5 must be >= 0"),
        ("train.seed=-1", "train.seed=-1 must be >= 0"),
        ("train.warmup_steps=-1", "train.warmup_steps=-1 must be >= 0"),
        ("train.max_minutes=-1", "train.max_minutes=-1.0 must be >= 0"),
        ("data.seed=-3", "data.seed=-3 must be >= 0"),
        ("model.rope_theta=0", "model.rope_theta=0.0 must be > 0"),
        ("model.norm_eps=-1e-6", "model.norm_eps=-1e-06 must be > 0"),
        ("model.init_std=0", "model.init_std=0.0 must be > 0"),
        ("model.pe_init_tau=-1", "model.pe_init_tau=-1.0 must be >= 0"),
        ("model.mlp_ratio=nan", "'model.mlp_ratio'='nan' must be a finite number"),
        ("parallel.tp=3", "parallel.tp=3 must divide model.n_heads=4"),  # used to fail at the first forward
        ("run.dir=", "run.dir='' must name a directory"),  # used to train into the current directory
        ("run.dir=' '", "run.dir=' ' must name a directory"),
    ],
)
def test_out_of_range_numbers_are_refused(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert fragment in str(err.value)


def test_tp_must_divide_the_mlp_width_too():
    """n_heads divisible is not enough: AutoTP also splits the MLP's hidden width."""
    from armd_scale.train.engine import batch_layout

    cfg = load_config(overrides=["parallel.tp=2", "model.mlp=gelu", "model.mlp_ratio=4.03"])  # hidden 515
    with pytest.raises(ConfigError, match="parallel.tp=2 must divide .* layers.0.mlp.up.weight has 515 along dim"):
        batch_layout(cfg, world_size=2)
    batch_layout(load_config(overrides=["parallel.tp=2"]), world_size=2)  # the default widths divide


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="presets: .*tiny-cpu"):
        load_config("no-such-preset")


def test_non_mapping_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_a_checkpoint_config_without_new_model_fields_loads_as_it_was_trained():
    """A saved config lacking neighbour_heads / positional_start_init predates them: the model it
    describes had no neighbour heads and a normally initialised W_s, and its weights must load."""
    from armd_scale.config import saved_config_from_dict
    from armd_scale.model import build_model

    # the model of that time: the positional start on (saved, it existed), no neighbour heads (not saved)
    old = load_config(
        overrides=["model.neighbour_heads=0", "model.positional_start=true", "model.positional_start_init=normal"]
    )
    raw = old.to_dict()
    del raw["model"]["neighbour_heads"], raw["model"]["positional_start_init"], raw["model"]["query_input"]
    raw["model"]["neighbour_kind"] = "symmetric"  # what it was then, so only the two deleted fields matter
    upgraded = saved_config_from_dict(raw)
    assert upgraded.model.neighbour_heads == 0 and upgraded.model.positional_start_init == "normal"
    state = build_model(old.model).state_dict()
    build_model(upgraded.model).load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="neighbour"):  # today's defaults would not fit those weights
        build_model(load_config().model).load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="start_proj"):  # nor would the paper's form
        build_model(load_config(overrides=["model.query_input=paper"]).model).load_state_dict(state, strict=True)
    # a config that has the fields keeps them
    assert saved_config_from_dict(load_config().to_dict()).model.neighbour_heads == load_config().model.neighbour_heads


def test_query_input_paper_sets_every_field_of_the_papers_form():
    from armd_scale.config import QUERY_INPUT_FORMS

    cfg = load_config("tiny-cpu", ["model.query_input=paper", "train.order.kind=l2r"]).model
    assert cfg.query_input == "paper"
    for key, value in QUERY_INPUT_FORMS["paper"].items():
        assert getattr(cfg, key) == value, key
    assert cfg.neighbour_heads == 0 and cfg.positional_start is False
    # the choices the paper leaves open stay ours: the PE table's width and start
    assert cfg.d_pe == 64 and cfg.pe_init == "recency"


@pytest.mark.parametrize(
    "override",
    ["model.neighbour_heads=4", "model.neighbour_heads=2", "model.positional_start=true", "model.prefix_agg=mean"],
)
def test_query_input_paper_refuses_a_field_that_contradicts_it(override):
    """Even a value equal to the field's default (neighbour_heads=4) is refused when it is given."""
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1] + ".*contradicts model.query_input"):
        load_config("tiny-cpu", ["model.query_input=paper", override])


def test_query_input_names_the_form_the_fields_make():
    """Without query_input the fields decide the label: the paper's fields spelled out are 'paper',
    any other mix is 'custom', and the default is 'neighbour'."""
    assert load_config().model.query_input == "neighbour"
    spelled = load_config(overrides=["model.neighbour_heads=0", "model.positional_start=false"]).model
    assert spelled.query_input == "paper"
    assert load_config(overrides=["model.neighbour_heads=2"]).model.query_input == "custom"
    assert load_config(overrides=["model.query_input=custom", "model.neighbour_heads=0"]).model.neighbour_heads == 0


def test_query_input_survives_a_round_trip_and_old_configs_get_their_label():
    from armd_scale.config import saved_config_from_dict

    for form in ("paper", "neighbour"):
        cfg = load_config(overrides=[f"model.query_input={form}"])
        assert config_from_dict(cfg.to_dict()).model == cfg.model
    old = load_config().to_dict()
    del old["model"]["query_input"]
    old["model"].update(neighbour_heads=0, positional_start=True, positional_start_init="normal")
    assert saved_config_from_dict(old).model.query_input == "custom"
    old["model"].update(neighbour_heads=4, positional_start_init="zero")  # a checkpoint of the neighbour default
    assert saved_config_from_dict(old).model.query_input == "neighbour"


def test_an_edited_saved_config_is_read_by_its_fields():
    """A saved config names its form and holds every field; one field changed makes it 'custom'."""
    raw = load_config(overrides=["model.query_input=neighbour"]).to_dict()
    raw["model"]["positional_start_scope"] = "first_block"
    cfg = config_from_dict(raw)
    assert cfg.model.query_input == "custom" and cfg.model.positional_start_scope == "first_block"
