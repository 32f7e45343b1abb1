//! Property tests: the parser never panics and round-trips, the vocabulary
//! round-trips, and every minibatch target is its input shifted by one.
use grulm::config::{parse_set, Config, Preprocess};
use grulm::data::{epoch_minibatches, epoch_rng, preprocess, SeqPartition, Vocab};
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
        let corpus: Vec<i64> = (0..len as i64).collect();
        let partition = if random { SeqPartition::Random } else { SeqPartition::Sequential };
        let mb = epoch_minibatches(&corpus, b, t, partition, &mut epoch_rng(seed, epoch));
        prop_assert!(mb.n >= 1, "at least one minibatch for {} tokens", len);
        prop_assert_eq!(mb.x.len(), mb.n * b * t);
        for k in 0..mb.n {
            for i in 0..b {
                let (x, y) = (mb.x_row(k, i), mb.y_row(k, i));
                for j in 0..t {
                    prop_assert_eq!(y[j], x[j] + 1);
                    prop_assert!((y[j] as usize) < len);
                }
            }
        }
    }
}
