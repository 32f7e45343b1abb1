//! Property tests: the parser never panics and round-trips, the vocabulary
//! round-trips, and every minibatch target is its input shifted by one.
use grulm::config::{parse_set, Config, Preprocess};
use grulm::data::{epoch_minibatches, epoch_rng, preprocess, Ids, SeqPartition, Vocab};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics(text in "\\PC{0,200}", sets in proptest::collection::vec("\\PC{0,30}", 0..3)) {
        let _ = Config::parse(&text, "fuzz.toml", &sets);
    }

    #[test]
    fn config_like_text_never_panics(
        section in prop::sample::select(vec!["data", "model", "train", "sample", "other"]),
        key in "[a-z_]{1,14}",
        value in prop_oneof![Just("1".to_string()), Just("-1".to_string()), Just("0".to_string()), Just("1e309".to_string()),
                             Just("nan".to_string()), Just("\"x\"".to_string()), Just("[1, \"a\"]".to_string()), Just("true".to_string()),
                             "[0-9.e+-]{1,8}", "\"[a-z]{0,6}\""],
    ) {
        let text = format!("[{section}]\n{key} = {value}\n");
        let _ = Config::parse(&text, "fuzz.toml", &[]);
        let _ = Config::parse("", "fuzz.toml", &[format!("{section}.{key}={value}")]);
    }

    #[test]
    fn valid_sets_round_trip_through_the_resolved_config(
        lr in 1e-6f64..10.0, epochs in 1usize..10_000, hidden in 1usize..4096, layers in 1usize..8,
        builtin in any::<bool>(), random in any::<bool>(), top_k in proptest::option::of(1usize..100),
    ) {
        let mut sets = vec![format!("train.lr={lr:?}"), format!("train.epochs={epochs}"), format!("model.hidden_size={hidden}"),
                            format!("model.num_layers={layers}"), format!("model.kind={}", if builtin { "builtin" } else { "scratch" }),
                            format!("data.partition=\"{}\"", if random { "random" } else { "sequential" })];
        if let Some(k) = top_k { sets.push(format!("sample.top_k={k}")); }
        let c = Config::parse("", "x.toml", &sets).unwrap();
        prop_assert_eq!(c.train.lr, lr);
        prop_assert_eq!(c.train.epochs, epochs);
        prop_assert_eq!(c.sample.top_k, top_k);
        prop_assert_eq!(Config::parse(&c.to_toml(), "resolved", &[]).unwrap(), c);
    }

    #[test]
    fn parse_set_never_panics(s in "\\PC{0,40}") {
        let _ = parse_set(&s);
    }

    #[test]
    fn vocabulary_round_trips_any_text(text in "\\PC{1,300}") {
        let chars = preprocess(&text, Preprocess::Raw);
        let vocab = Vocab::build(&chars, 0, &[]);
        let ids = vocab.encode(&chars);
        prop_assert_eq!(vocab.decode(&ids), text.clone());
        let again = Vocab::from_json(&vocab.to_json()).unwrap();
        prop_assert_eq!(again.decode(&ids), text);
    }

    #[test]
    fn d2l_mode_yields_only_letters_and_single_spaces(text in "\\PC{0,300}") {
        let s: String = preprocess(&text, Preprocess::D2l).into_iter().collect();
        prop_assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == ' '));
        prop_assert!(!s.contains("  "));
    }

    #[test]
    fn every_target_is_its_input_shifted_by_one(b in 1usize..12, t in 1usize..20, extra in 0usize..300, seed in any::<u64>(), epoch in 0usize..50, random in any::<bool>()) {
        let len = b * t + 1 + extra;
        // Token i is i, so "shifted by one" is visible in the ids.
        let corpus = Ids::I32((0..len as i32).collect());
        let partition = if random { SeqPartition::Random } else { SeqPartition::Sequential };
        let mb = epoch_minibatches(len, b, t, partition, &mut epoch_rng(seed, epoch));
        prop_assert!(mb.n >= 1, "at least one minibatch for {} tokens", len);
        prop_assert_eq!(mb.starts.len(), mb.n * b);
        for k in 0..mb.n {
            for i in 0..b {
                let (x, y) = mb.row(&corpus, k, i);
                for j in 0..t {
                    prop_assert_eq!(y[j], x[j] + 1);
                    prop_assert!((y[j] as usize) < len);
                }
            }
        }
    }
}

/// A text of grulm's own (not third-party): letters in both cases, digits,
/// punctuation and newlines, so both preprocessings and every min_freq have
/// something to keep and something to drop.
fn fuzz_corpus() -> String {
    "the quick test of every path, with Capitals and digits 0123!\nthen a second line: short; odd (chars) here?\n".repeat(20)
}

/// Sets for a random valid config: every key, every enum value, small sizes.
fn valid_config() -> impl Strategy<Value = Vec<String>> {
    let data = (any::<bool>(), 0usize..3, any::<bool>(), any::<bool>(), 1usize..5, 1usize..9, any::<bool>());
    let model = (any::<bool>(), 0usize..3, 1usize..7, 1usize..4, any::<bool>(), 0usize..3, proptest::option::of(0.001f64..0.5));
    let train = (
        any::<bool>(),
        0.01f64..2.0,
        0.1f64..5.0,
        any::<u32>(),
        0usize..3,
        0usize..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..4,
    );
    let sample = (proptest::option::of(0.1f64..3.0), proptest::option::of(1usize..3), proptest::option::of(0.05f64..1.0), any::<u32>());
    let dropout = (proptest::option::of(0.0f64..0.9), proptest::option::of(0.0f64..0.9));
    (data, model, train, sample, dropout).prop_map(|(d, m, t, s, (dropout, weight_drop))| {
        let (raw, min_freq, reserved, val, b, steps, random) = d;
        let (builtin, cell, hidden, layers, after, gates, sigma) = m;
        let (adam, lr, clip, seed, predict_every, checkpoint_every, deterministic, cuda_graph, tensorboard, epoch_steps) = t;
        let (temperature, top_k, top_p, sample_seed) = s;
        // Enough tokens for one B x T minibatch in each split (val_fraction 0.5).
        let tokens = 2 * (b * steps + 1) + 3;
        let mut sets = vec![
            format!("data.preprocess=\"{}\"", if raw { "raw" } else { "d2l" }),
            format!("data.max_tokens={tokens}"),
            format!("data.min_freq={min_freq}"),
            format!("data.reserved_tokens={}", if reserved { "[\"<pad>\"]" } else { "[]" }),
            format!("data.val_fraction={}", if val { "0.5" } else { "0.0" }),
            format!("data.partition=\"{}\"", if random { "random" } else { "sequential" }),
            format!("data.batch_size={b}"),
            format!("data.num_steps={steps}"),
            format!("model.kind=\"{}\"", if builtin { "builtin" } else { "scratch" }),
            format!("model.cell=\"{}\"", ["gru", "lstm", "rnn"][cell]),
            format!("model.hidden_size={hidden}"),
            format!("model.num_layers={layers}"),
            format!("train.optimizer=\"{}\"", if adam { "adam" } else { "sgd" }),
            format!("train.lr={}", if adam { lr / 100.0 } else { lr }),
            format!("train.grad_clip={clip}"),
            format!("train.seed={seed}"),
            "train.epochs=1".into(),
            // Up to 3 minibatches an epoch: a pass has one or two, so some epochs span passes.
            format!("train.epoch_steps={epoch_steps}"),
            "train.threads=1".into(),
            format!("train.predict_every={predict_every}"),
            format!("train.checkpoint_every={checkpoint_every}"),
            "train.val_every=1".into(),
            format!("train.deterministic={deterministic}"),
            format!("train.cuda_graph={cuda_graph}"),
            format!("train.tensorboard={tensorboard}"),
            "sample.prefixes=[\"t\", \"th\"]".into(),
            "sample.len=5".into(),
            format!("sample.seed={sample_seed}"),
        ];
        if cell == 0 {
            // The GRU's own keys: builtin is PyTorch's reset-after GRU with both gates;
            // PyTorch has no update-only GRU with the reset after.
            let after = after || builtin;
            sets.push(format!("model.reset_gate=\"{}\"", if after { "after" } else { "before" }));
            let gates = if builtin || (after && gates == 2) { 0 } else { gates };
            sets.push(format!("model.gru_gates=\"{}\"", ["both", "reset-only", "update-only"][gates]));
        }
        if let (Some(sigma), false) = (sigma, builtin) {
            sets.push(format!("model.init_sigma={sigma}"));
        }
        if let Some(p) = dropout {
            sets.push(format!("model.dropout={p}"));
        }
        if let Some(p) = weight_drop {
            sets.push(format!("model.weight_drop={p}"));
        }
        if let Some(t) = temperature {
            sets.push(format!("sample.temperature={t}"));
        }
        if let Some(k) = top_k {
            sets.push(format!("sample.top_k={k}"));
        }
        if let Some(p) = top_p {
            sets.push(format!("sample.top_p={p}"));
        }
        sets
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random valid small configs through the real code paths: an epoch of one
    /// or two minibatches, the validation pass, the end-of-training predictions,
    /// the run's files, and a 5-character sample from the saved run. Any panic
    /// (or error) fails the case.
    #[test]
    fn any_valid_small_config_trains_validates_and_samples(sets in valid_config()) {
        use grulm::platform::console::Console;
        use grulm::run::RunDir;
        use grulm::infer::sample::{predict, Decode};
        use grulm::train::{train, TrainOptions};
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CASE: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static DIR: crate::helpers::TempDir = {
                let d = crate::helpers::TempDir::new("fuzz");
                d.write("corpus.txt", fuzz_corpus());
                d
            };
        }
        let (root, corpus) = DIR.with(|d| (d.path().to_path_buf(), d.join("corpus.txt")));
        let mut all = vec![format!("data.corpus={:?}", corpus.display().to_string())];
        all.extend(sets.iter().cloned());
        let cfg = Config::parse("", "fuzz", &all).map_err(|e| TestCaseError::fail(format!("a valid config was refused: {e}")))?;
        let run = root.join(format!("run{}", CASE.fetch_add(1, Ordering::SeqCst)));
        let opts = TrainOptions { run: RunDir::new(&run), resume: false, force: false, device: tch::Device::Cpu };
        let outcome = train(&cfg, &opts, &Console::new(1, 0, true)).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let last = outcome.last.expect("one epoch");
        prop_assert!(last.train_ppl.is_finite());
        prop_assert_eq!(last.val_ppl.is_some(), cfg.data.val_fraction > 0.0);
        prop_assert_eq!(outcome.predictions.len(), 2);
        let grulm::run::Trained { cfg: saved, vocab, mut model, .. } = opts.run.load_model(tch::Device::Cpu, grulm::run::Weights::Last).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert_eq!(&saved, &cfg);
        let decode = Decode::from_options(cfg.sample.temperature, cfg.sample.top_k, cfg.sample.top_p, cfg.sample.seed);
        let text = predict(model.as_mut(), &vocab, "t", 5, decode, tch::Device::Cpu).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert!(text.starts_with('t'), "{}", text);
        let _ = std::fs::remove_dir_all(&run);
    }
}

// ---------------------------------------------------------------------------
// The minibatch path against the one it replaced.

/// Today's minibatches before big corpora (grulm until 2026-11-29, verbatim but
/// for names): every epoch materialised as `[n, B, T]` inputs and targets.
mod materialised {
    use grulm::data::SeqPartition;
    use rand::seq::SliceRandom;
    use rand::Rng;

    pub struct Old {
        pub n: usize,
        pub x: Vec<i64>,
        pub y: Vec<i64>,
    }

    pub fn epoch_minibatches(corpus: &[i64], b: usize, t: usize, partition: SeqPartition, rng: &mut impl Rng) -> Old {
        let slack = corpus.len() - 1 - b * t;
        match partition {
            SeqPartition::Sequential => {
                let offset = rng.gen_range(0..=t.min(slack));
                let num_tokens = ((corpus.len() - offset - 1) / b) * b;
                let row_len = num_tokens / b;
                let n = row_len / t;
                let (mut x, mut y) = (vec![], vec![]);
                for k in 0..n {
                    for i in 0..b {
                        let start = offset + i * row_len + k * t;
                        x.extend_from_slice(&corpus[start..start + t]);
                        y.extend_from_slice(&corpus[start + 1..start + 1 + t]);
                    }
                }
                Old { n, x, y }
            }
            SeqPartition::Random => {
                let offset = rng.gen_range(0..=(t - 1).min(slack));
                let rest = &corpus[offset..];
                let num_subseqs = (rest.len() - 1) / t;
                let mut starts: Vec<usize> = (0..num_subseqs).map(|i| i * t).collect();
                starts.shuffle(rng);
                let n = num_subseqs / b;
                let (mut x, mut y) = (vec![], vec![]);
                for &s in &starts[..n * b] {
                    x.extend_from_slice(&rest[s..s + t]);
                    y.extend_from_slice(&rest[s + 1..s + 1 + t]);
                }
                Old { n, x, y }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The trainer's minibatches (positions per epoch, cut out of the compact
    /// ids on the device at each step) are exactly the materialised ones, for
    /// both partitions, every id width and any seed.
    #[test]
    fn minibatches_cut_per_step_equal_the_materialised_ones(
        b in 1usize..10, t in 1usize..16, extra in 0usize..400, seed in any::<u64>(), epoch in 0usize..100,
        random in any::<bool>(), vocab in prop::sample::select(vec![2usize, 28, 256, 257, 40_000]), id_seed in any::<u64>(),
    ) {
        use rand::{Rng, SeedableRng};
        let len = b * t + 1 + extra;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(id_seed);
        let wide: Vec<i64> = (0..len).map(|_| rng.gen_range(0..vocab as i64)).collect();
        let ids = Ids::from_i64(vocab, &wide);
        prop_assert_eq!(ids.bytes(), len * Ids::width_for(vocab));
        let partition = if random { SeqPartition::Random } else { SeqPartition::Sequential };
        let old = materialised::epoch_minibatches(&wide, b, t, partition, &mut epoch_rng(seed, epoch));
        let new = epoch_minibatches(len, b, t, partition, &mut epoch_rng(seed, epoch));
        prop_assert_eq!(new.n, old.n);
        let data = grulm::data::TokenData::upload(&ids, t, tch::Device::Cpu);
        let starts = data.starts(&new);
        for k in 0..new.n {
            let (x, y) = data.minibatch(&starts, k as i64);
            prop_assert_eq!(x.size(), vec![b as i64, t as i64]);
            prop_assert_eq!(x.kind(), tch::Kind::Int64);
            let span = k * b * t..(k + 1) * b * t;
            prop_assert_eq!(Vec::<i64>::try_from(x.flatten(0, -1)).unwrap(), old.x[span.clone()].to_vec());
            prop_assert_eq!(Vec::<i64>::try_from(y.flatten(0, -1)).unwrap(), old.y[span].to_vec());
            for i in 0..b {
                let (rx, ry) = new.row(&ids, k, i);
                let at = (k * b + i) * t;
                prop_assert_eq!(&rx[..], &old.x[at..at + t]);
                prop_assert_eq!(&ry[..], &old.y[at..at + t]);
            }
        }
    }

    /// The streamed preprocessing and counting give the vocabulary and ids the
    /// collect-then-count path gives.
    #[test]
    fn streamed_corpus_equals_collected(text in "\\PC{1,400}", raw in any::<bool>(), min_freq in 0usize..3) {
        let mode = if raw { Preprocess::Raw } else { Preprocess::D2l };
        let chars = preprocess(&text, mode);
        prop_assume!(chars.len() > 2);
        let vocab = Vocab::build(&chars, min_freq, &[]);
        let mut cfg = Config::default().data;
        (cfg.preprocess, cfg.max_tokens, cfg.min_freq, cfg.batch_size, cfg.num_steps) = (mode, 0, min_freq, 1, 1);
        let c = grulm::data::Corpus::from_text(&text, &cfg, "t").unwrap();
        prop_assert_eq!(&c.vocab, &vocab);
        prop_assert_eq!(c.train.to_vec(0..c.train.len()), vocab.encode(&chars));
    }
}
