//! The data pipeline against d2l's printed facts, and the download against a
//! local HTTP server.
use crate::helpers::{timemachine, TempDir};
use grulm::config::{Config, Preprocess};
use grulm::data::{self, epoch_minibatches, epoch_rng, Corpus, Ids, SeqPartition, Vocab};
use std::io::{Read, Write};
use std::net::TcpListener;

#[test]
fn timemachine_matches_d2l() {
    let Some(path) = timemachine() else { return };
    let text = data::read_text(&path).unwrap();
    assert_eq!(data::hex_sha1(text.as_bytes()), data::TIMEMACHINE_SHA1);
    let chars = data::preprocess(&text, Preprocess::D2l);
    // d2l 0.17's text-preprocessing notebook prints len(corpus) = 170580, len(vocab) = 28.
    assert_eq!(chars.len(), 170_580);
    let vocab = Vocab::build(&chars, 0, &[]);
    assert_eq!(vocab.len(), 28);
    let order: String = vocab.tokens()[1..].iter().map(String::as_str).collect();
    assert_eq!(&vocab.tokens()[0], "<unk>");
    assert_eq!(order, " etainoshrdlmucfwgypbvkxzjq");
    // d2l's line-wise preprocessing joins lines with no separator ("wellsithe").
    let start: String = chars[..60].iter().collect();
    assert_eq!(start, "the time machine by h g wellsithe time traveller for so it w");
}

#[test]
fn d2l_default_corpus_has_8_minibatches_in_both_partitions() {
    let Some(path) = timemachine() else { return };
    let mut cfg = Config::default().data;
    cfg.corpus = data::CorpusSource::Path(path.display().to_string());
    let corpus = Corpus::load(&cfg).unwrap();
    assert_eq!(corpus.train.len(), 10_000);
    assert_eq!(corpus.vocab.len(), 28);
    assert_eq!(corpus.total_chars, 170_580);
    for partition in [SeqPartition::Sequential, SeqPartition::Random] {
        for epoch in 0..40 {
            let mb = epoch_minibatches(corpus.train.len(), 32, 35, partition, &mut epoch_rng(7, epoch));
            assert_eq!(mb.n, 8, "{partition:?} epoch {epoch}");
            assert_eq!(mb.starts.len(), 8 * 32);
        }
    }
}

/// A corpus whose token i is i, so positions can be read off the ids.
fn positions(n: usize) -> Ids {
    Ids::I32((0..n as i32).collect())
}

#[test]
fn targets_are_inputs_shifted_by_one() {
    let corpus = positions(1000);
    for partition in [SeqPartition::Sequential, SeqPartition::Random] {
        let mb = epoch_minibatches(corpus.len(), 4, 9, partition, &mut epoch_rng(1, 3));
        assert!(mb.n > 0);
        for k in 0..mb.n {
            for i in 0..4 {
                let (x, y) = mb.row(&corpus, k, i);
                assert_eq!(x.len(), 9);
                for j in 0..9 {
                    assert_eq!(y[j], x[j] + 1);
                    if j > 0 {
                        assert_eq!(x[j], x[j - 1] + 1, "a row is a contiguous run of text");
                    }
                }
            }
        }
    }
}

#[test]
fn sequential_rows_continue_across_minibatches() {
    let corpus = positions(2000);
    let mb = epoch_minibatches(corpus.len(), 5, 7, SeqPartition::Sequential, &mut epoch_rng(3, 0));
    assert!(mb.n >= 2);
    for k in 0..mb.n - 1 {
        for i in 0..5 {
            let last = *mb.row(&corpus, k, i).0.last().unwrap();
            assert_eq!(mb.row(&corpus, k + 1, i).0[0], last + 1, "row {i} of minibatch {} continues minibatch {k}", k + 1);
        }
    }
}

#[test]
fn random_partition_is_disjoint_shuffled_and_covers_its_claim() {
    let corpus = positions(1000);
    let (b, t) = (4, 9);
    let mut saw_non_adjacent = false;
    for epoch in 0..10 {
        let mb = epoch_minibatches(corpus.len(), b, t, SeqPartition::Random, &mut epoch_rng(5, epoch));
        let starts: Vec<i64> = (0..mb.n).flat_map(|k| (0..b).map(move |i| (k, i))).map(|(k, i)| mb.row(&corpus, k, i).0[0]).collect();
        // One offset for the epoch, subsequences on its grid, none repeated.
        let offset = starts[0] % t as i64;
        assert!(offset < t as i64);
        assert!(starts.iter().all(|s| s % t as i64 == offset));
        let mut sorted = starts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), starts.len(), "subsequences overlap");
        // d2l: (len - offset - 1) // T subsequences, (that // B) minibatches of B.
        let num_subseqs = (1000 - offset as usize - 1) / t;
        assert_eq!(mb.n, num_subseqs / b);
        assert_eq!(starts.len(), mb.n * b);
        assert!(sorted.iter().all(|&s| (s as usize) + t < 1000));
        if (0..mb.n - 1).any(|k| mb.start(k + 1, 0) != mb.start(k, 0) + t) {
            saw_non_adjacent = true;
        }
    }
    assert!(saw_non_adjacent, "random partition must not walk the text in order");
}

#[test]
fn offsets_follow_d2l_ranges() {
    let corpus = positions(5000);
    let (mut seq, mut rnd) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for epoch in 0..400 {
        seq.insert(epoch_minibatches(corpus.len(), 4, 5, SeqPartition::Sequential, &mut epoch_rng(0, epoch)).starts[0]);
        let r = epoch_minibatches(corpus.len(), 4, 5, SeqPartition::Random, &mut epoch_rng(0, epoch));
        rnd.insert(r.starts.iter().min().unwrap() % 5);
    }
    // randint(0, T) is inclusive for the sequential partition, randint(0, T-1) for the random one.
    assert_eq!(seq.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(rnd.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
}

#[test]
fn raw_mode_round_trips_through_the_vocabulary() {
    let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\tSpeak, speak! — ¿Qué? 42%\r\n";
    let chars = data::preprocess(text, Preprocess::Raw);
    let vocab = Vocab::build(&chars, 0, &["<pad>".to_string()]);
    assert_eq!(&vocab.tokens()[..2], &["<unk>".to_string(), "<pad>".to_string()]);
    let ids = vocab.encode(&chars);
    assert!(ids.iter().all(|&i| i >= 2));
    assert_eq!(vocab.decode(&ids), text);
    let again = Vocab::from_json(&vocab.to_json()).unwrap();
    assert_eq!(again, vocab);
    assert_eq!(again.decode(&ids), text);
}

#[test]
fn d2l_preprocessing_of_punctuation_and_lines() {
    let text = "The Time-Machine!\r\n\n  by H. G. Wells  \nI.\n";
    let chars: String = data::preprocess(text, Preprocess::D2l).into_iter().collect();
    assert_eq!(chars, "the time machineby h g wellsi");
}

#[test]
fn vocabulary_min_freq_ties_and_unknowns() {
    let chars: Vec<char> = "abbcccdd".chars().collect();
    let vocab = Vocab::build(&chars, 2, &[]);
    // c (3) first, then b and d (2 each) in order of first appearance; a (1) dropped.
    assert_eq!(vocab.tokens(), &["<unk>", "c", "b", "d"]);
    assert_eq!(vocab.index('a'), 0);
    assert_eq!(vocab.encode(&['a', 'd']), vec![0, 3]);
}

#[test]
fn validation_split_is_the_last_fraction() {
    let text: String = "abcdefghij".repeat(100);
    let mut cfg = Config::default().data;
    cfg.preprocess = Preprocess::Raw;
    cfg.max_tokens = 0;
    cfg.batch_size = 2;
    cfg.num_steps = 5;
    cfg.val_fraction = 0.2;
    let c = Corpus::from_text(&text, &cfg, "t").unwrap();
    assert_eq!(c.train.len(), 800);
    assert_eq!(c.val.as_ref().unwrap().len(), 200);
    let all = c.vocab.encode(&text.chars().collect::<Vec<_>>());
    assert_eq!(&all[800..], &c.val.unwrap().to_vec(0..200)[..]);
    assert_eq!(&all[..800], &c.train.to_vec(0..800)[..]);
    assert!(matches!(c.train, Ids::U8(_)), "11 tokens: one byte each");
}

/// Serves `body` for one or more GETs on 127.0.0.1; returns the URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/timemachine.txt", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok((mut s, _)) = listener.accept() else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    url
}

#[test]
fn download_checks_sha1_and_writes_atomically() {
    let dir = TempDir::new("download");
    let body = b"the time machine by h g wells\n".to_vec();
    let sha = data::hex_sha1(&body);
    let url = serve(body.clone(), 2);

    let dest = dir.join("ok.txt");
    data::download_verified(&url, &sha, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);

    let bad = dir.join("bad.txt");
    let err = data::download_verified(&url, data::TIMEMACHINE_SHA1, &bad).unwrap_err().to_string();
    assert!(err.contains("SHA-1") && err.contains(&sha), "{err}");
    assert!(!bad.exists(), "a mismatch must leave no file");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only ok.txt, no temporary files: {leftovers:?}");
}

#[test]
fn download_without_network_says_where_to_put_the_file() {
    let dir = TempDir::new("nonet");
    let err = data::download_verified("http://127.0.0.1:9/timemachine.txt", data::TIMEMACHINE_SHA1, &dir.join("t.txt")).unwrap_err();
    assert!(err.to_string().contains("download of http://127.0.0.1:9/timemachine.txt failed"), "{err}");
    assert!(!dir.join("t.txt").exists());
}

/// A small source tree: nested folders, a name that sorts differently by path
/// than by folder (`a-b/` before `a/` in byte order), a file without a final
/// newline, an empty one, a hidden one, a file that no pattern takes, and a
/// link to a directory (not followed).
fn source_tree(dir: &TempDir) {
    dir.write("src/a/x.c", "int x;\n");
    dir.write("src/a-b/y.h", "#define Y 1"); // no final newline
    dir.write("src/a/deep/z.c", "/* ü */\nint z;\n");
    dir.write("src/b.c", "");
    dir.write("src/.hidden.c", "hidden\n");
    dir.write("src/Makefile", "all:\n");
    dir.write("src/a/w.h", "int w;\n");
    std::os::unix::fs::symlink(dir.join("src/a"), dir.join("src/link")).unwrap();
}

#[test]
fn a_directory_corpus_is_its_files_in_sorted_order() {
    let dir = TempDir::new("corpus-dir");
    source_tree(&dir);
    let mut cfg = Config::default().data;
    cfg.corpus = data::CorpusSource::Path(dir.join("src").display().to_string());
    cfg.include = Some("*.c, *.h".into());
    // The order `find | LC_ALL=C sort` gives (the linux-fs.sh recipe), each
    // file's bytes, and a newline after a file that lacks one.
    let found = std::process::Command::new("bash")
        .args(["-c", "find src -path src/.hidden.c -prune -o -type f \\( -name '*.c' -o -name '*.h' \\) -print | LC_ALL=C sort"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let order: Vec<String> = String::from_utf8(found.stdout).unwrap().lines().map(String::from).collect();
    assert_eq!(order, ["src/a-b/y.h", "src/a/deep/z.c", "src/a/w.h", "src/a/x.c", "src/b.c"]);
    let mut want = String::new();
    for f in &order {
        if !want.is_empty() && !want.ends_with('\n') {
            want.push('\n');
        }
        want += &std::fs::read_to_string(dir.join(f)).unwrap();
    }
    let (text, files) = data::read_corpus(&cfg).unwrap();
    assert_eq!(text, want);
    assert_eq!(text, "#define Y 1\n/* ü */\nint z;\nint w;\nint x;\n");
    let read: Vec<String> = files.files.iter().map(|(p, _)| p.strip_prefix(dir.path()).unwrap().display().to_string()).collect();
    assert_eq!(read, order);
    assert_eq!(files.bytes(), order.iter().map(|f| std::fs::metadata(dir.join(f)).unwrap().len()).sum::<u64>());
    // Without data.include: every file (the Makefile too), hidden ones still skipped.
    cfg.include = None;
    let (_, all) = data::read_corpus(&cfg).unwrap();
    assert_eq!(all.files.len(), 6);
    // A list: its entries in the order given, a directory among them expanded.
    cfg.corpus = data::CorpusSource::List(vec![dir.join("src/a/x.c").display().to_string(), dir.join("src/a-b").display().to_string()]);
    assert_eq!(data::read_corpus(&cfg).unwrap().0, "int x;\n#define Y 1");
}
