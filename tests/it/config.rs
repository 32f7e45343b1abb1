//! Config parsing: defaults, overrides, and one clear line per mistake.
use grulm::config::{Config, ModelKind, OptimizerKind, ResetGate};
use grulm::data::SeqPartition;

fn err(text: &str, sets: &[&str]) -> String {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::parse(text, "exp.toml", &sets).unwrap_err().to_string()
}

#[test]
fn defaults_are_d2l_gru_chapter() {
    let c = Config::parse("", "exp.toml", &[]).unwrap();
    assert_eq!(c.data.max_tokens, 10_000);
    assert_eq!(c.data.partition, SeqPartition::Sequential);
    assert_eq!((c.data.batch_size, c.data.num_steps), (32, 35));
    assert_eq!(c.model.hidden_size, 256);
    assert_eq!(c.model.kind, ModelKind::Scratch);
    assert_eq!(c.model.reset_gate, Some(ResetGate::Before));
    assert_eq!(c.model.num_layers, 1);
    assert_eq!(c.train.epochs, 500);
    assert_eq!(c.train.optimizer, OptimizerKind::Sgd);
    assert_eq!((c.train.lr, c.train.grad_clip), (1.0, 1.0));
    assert_eq!(c.sample.prefixes, vec!["time traveller", "traveller"]);
    assert_eq!(c.sample.len, 50);
}

#[test]
fn builtin_defaults_to_reset_after_and_refuses_before() {
    let c = Config::parse("[model]\nkind = \"builtin\"\n", "exp.toml", &[]).unwrap();
    assert_eq!(c.model.reset_gate, Some(ResetGate::After));
    let e = err("[model]\nkind = \"builtin\"\nreset_gate = \"before\"\n", &[]);
    assert!(e.starts_with("exp.toml: model.reset_gate = \"before\": expected \"after\""), "{e}");
}

#[test]
fn set_overrides_and_names_itself_in_errors() {
    let sets = ["train.lr=0.5".to_string(), "model.kind=builtin".to_string(), "data.partition=\"random\"".to_string()];
    let c = Config::parse("[train]\nlr = 2\n", "exp.toml", &sets).unwrap();
    assert_eq!(c.train.lr, 0.5);
    assert_eq!(c.model.kind, ModelKind::Builtin);
    assert_eq!(c.data.partition, SeqPartition::Random);
    assert_eq!(err("", &["train.lr=-1"]), "--set train.lr=-1: train.lr = -1: expected a finite number > 0");
    assert_eq!(err("", &["train.lrr=1"]), "--set train.lrr=1: unknown key train.lrr; expected one of: epochs, epoch_steps, max_minutes, optimizer, lr, lr_schedule, lr_decay, lr_decay_every, warmup_epochs, grad_clip, seed, device, threads, predict_every, checkpoint_every, val_every, deterministic, precision, cuda_graph, tensorboard, progress_seconds, patience, init_from");
}

#[test]
fn each_mistake_gets_one_line_with_file_key_value_and_expectation() {
    let cases: &[(&str, &str)] = &[
        ("[train]\nlrr = 1\n", "exp.toml: unknown key train.lrr; expected one of: epochs,"),
        ("[trian]\nlr = 1\n", "exp.toml: unknown section [trian]; expected one of: data, model, train, sample"),
        ("[train]\nlr = \"fast\"\n", "exp.toml: train.lr = \"fast\": expected a number > 0"),
        ("[train]\nlr = 0\n", "exp.toml: train.lr = 0: expected a finite number > 0"),
        ("[train]\nlr = nan\n", "exp.toml: train.lr = nan: expected a finite number > 0"),
        ("[train]\nlr = -0.1\n", "exp.toml: train.lr = -0.1: expected a finite number > 0"),
        ("[train]\ngrad_clip = 0\n", "exp.toml: train.grad_clip = 0: expected a finite number > 0"),
        ("[train]\nepochs = 0\n", "exp.toml: train.epochs = 0: expected an integer from 1 to 1048576"),
        ("[train]\nepochs = -5\n", "exp.toml: train.epochs = -5: expected an integer from 1 to 1048576"),
        ("[train]\nepochs = 2.5\n", "exp.toml: train.epochs = 2.5: expected an integer from 1 to 1048576"),
        ("[data]\nbatch_size = 0\n", "exp.toml: data.batch_size = 0: expected an integer from 1 to 65536"),
        ("[data]\nnum_steps = -1\n", "exp.toml: data.num_steps = -1: expected an integer from 1 to 65536"),
        ("[model]\nhidden_size = 0\n", "exp.toml: model.hidden_size = 0: expected an integer from 1 to 65536"),
        ("[model]\nnum_layers = 0\n", "exp.toml: model.num_layers = 0: expected an integer from 1 to 1024"),
        ("[model]\nkind = \"lstm\"\n", "exp.toml: model.kind = \"lstm\": expected \"scratch\" or \"builtin\""),
        ("[model]\nreset_gate = \"middle\"\n", "exp.toml: model.reset_gate = \"middle\": expected \"before\" or \"after\""),
        ("[train]\noptimizer = \"rmsprop\"\n", "exp.toml: train.optimizer = \"rmsprop\": expected \"sgd\" or \"adam\""),
        ("[data]\npartition = \"shuffled\"\n", "exp.toml: data.partition = \"shuffled\": expected \"sequential\" or \"random\""),
        ("[data]\npreprocess = \"lower\"\n", "exp.toml: data.preprocess = \"lower\": expected \"d2l\" or \"raw\""),
        ("[train]\ndevice = \"tpu\"\n", "exp.toml: train.device = \"tpu\": expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""),
        ("[data]\nval_fraction = 1.0\n", "exp.toml: data.val_fraction = 1.0: expected a finite number in [0, 1)"),
        ("[sample]\ntemperature = 0\n", "exp.toml: sample.temperature = 0: expected a finite number > 0"),
        ("[sample]\ntop_k = 0\n", "exp.toml: sample.top_k = 0: expected an integer from 1 to 1048576"),
        ("[sample]\nprefixes = [\"\"]\n", "exp.toml: sample.prefixes = [\"\"]: expected non-empty strings"),
        ("[train]\ndeterministic = \"yes\"\n", "exp.toml: train.deterministic = \"yes\": expected true or false"),
        ("[train]\ncuda_graph = 1\n", "exp.toml: train.cuda_graph = 1: expected true or false"),
        (
            "[model]\nkind = \"builtin\"\ninit_sigma = 0.1\n",
            "exp.toml: model.init_sigma = 0.1: expected no value for model.kind = \"builtin\"",
        ),
        ("[train]\nlr = \n", "exp.toml:2:6: malformed TOML:"),
        ("train = 3\n", "exp.toml: train = 3: expected a [train] section"),
    ];
    for (text, want) in cases {
        let e = err(text, &[]);
        assert!(e.starts_with(want), "for {text:?}\n got: {e}\nwant: {want}...");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn malformed_set_is_refused() {
    for (set, why) in [
        ("train.lr", "no '='"),
        ("lr=1", "the key has no section"),
        ("train.=1", "malformed key"),
        ("train.lr=", "empty value"),
        (".x=1", "malformed key"),
    ] {
        let e = err("", &[set]);
        assert_eq!(e, format!("--set {set}: {why}; expected SECTION.KEY=VALUE, e.g. --set train.lr=0.5"));
    }
}

#[test]
fn resolved_config_is_saved_whole_and_round_trips() {
    let c =
        Config::parse("[model]\nkind = \"builtin\"\nnum_layers = 2\n[sample]\ntop_k = 3\n", "exp.toml", &["train.lr=0.25".into()]).unwrap();
    let toml = c.to_toml();
    for key in ["max_tokens = 10000", "reset_gate = \"after\"", "lr = 0.25", "top_k = 3", "partition = \"sequential\""] {
        assert!(toml.contains(key), "{key} missing from\n{toml}");
    }
    assert_eq!(Config::parse(&toml, "resolved", &[]).unwrap(), c);
    assert!(c.differing_keys(&c).is_empty());
    let d = Config::parse(&toml, "resolved", &["train.epochs=9".into(), "model.num_layers=3".into()]).unwrap();
    assert_eq!(c.differing_keys(&d), vec!["model.num_layers", "train.epochs"]);
}

#[test]
fn shipped_configs_parse_and_differ_from_defaults() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let c = Config::parse(&text, &p.display().to_string(), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(text.lines().next().unwrap().starts_with('#'), "{} opens with a comment on what it shows", p.display());
        if !p.ends_with("gru-scratch.toml") {
            assert_ne!(c, Config::default(), "{} lists differences", p.display());
        }
        n += 1;
    }
    assert!(n >= 4);
}

#[test]
fn cells_and_gru_variants() {
    use grulm::config::{CellKind, GruGates};
    let c = Config::parse("[model]\ncell = \"lstm\"\n", "exp.toml", &[]).unwrap();
    assert_eq!((c.model.cell, c.model.reset_gate), (CellKind::Lstm, None), "a reset gate is the GRU's only");
    let c = Config::parse("[model]\nkind = \"builtin\"\ncell = \"rnn\"\n", "exp.toml", &[]).unwrap();
    assert_eq!((c.model.cell, c.model.reset_gate), (CellKind::Rnn, None));
    let c = Config::parse("[model]\ngru_gates = \"reset-only\"\nreset_gate = \"after\"\n", "exp.toml", &[]).unwrap();
    assert_eq!((c.model.gru_gates, c.model.reset_gate), (GruGates::ResetOnly, Some(ResetGate::After)));
    // Every resolved config reads back as itself (run directories keep it).
    for text in ["[model]\ncell = \"lstm\"\n", "[model]\nkind = \"builtin\"\ncell = \"lstm\"\n", "[model]\ngru_gates = \"update-only\"\n"] {
        let c = Config::parse(text, "exp.toml", &[]).unwrap();
        assert_eq!(Config::parse(&c.to_toml(), "resolved", &[]).unwrap(), c, "{text}");
    }
    for (text, want) in [
        ("[model]\ncell = \"gru2\"\n", "exp.toml: model.cell = \"gru2\": expected \"gru\" or \"lstm\" or \"rnn\" or \"mingru\" or \"minlstm\""),
        ("[model]\ncell = \"lstm\"\nreset_gate = \"after\"\n", "exp.toml: model.reset_gate = \"after\": expected no value for model.cell = \"lstm\" (reset_gate applies to the GRU only)"),
        ("[model]\ncell = \"rnn\"\ngru_gates = \"both\"\n", "exp.toml: model.gru_gates = \"both\": expected no value for model.cell = \"rnn\" (gru_gates applies to the GRU only)"),
        ("[model]\nkind = \"builtin\"\ngru_gates = \"reset-only\"\n", "exp.toml: model.gru_gates = \"reset-only\": expected \"both\" for model.kind = \"builtin\" (libtorch's GRU has both gates; the ablations are scratch only)"),
        ("[model]\ngru_gates = \"update-only\"\nreset_gate = \"after\"\n", "exp.toml: model.reset_gate = \"after\": expected \"before\" or no value for model.gru_gates = \"update-only\" (without a reset gate both placements are one function)"),
        ("[model]\ngru_gates = \"none\"\n", "exp.toml: model.gru_gates = \"none\": expected \"both\" or \"reset-only\" or \"update-only\""),
    ] {
        assert_eq!(err(text, &[]), want);
    }
}
