//! The fuzz target on stable: every file of fuzz/corpus-seed/, fuzz/corpus/ (when a
//! fuzzing run left one) and configs/tests/data/ goes through
//! basalt_config::fuzzing::exercise, the same function the libFuzzer target calls. A
//! panic fails the test and names the input.

use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn corpus_replays_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = Vec::new();
    for dir in [
        "../fuzz/corpus-seed",
        "../fuzz/corpus/parse_config",
        "tests/data",
    ] {
        files_under(&root.join(dir), &mut inputs);
    }
    inputs.sort();
    // The seed corpus and the fixtures are committed; finding neither means the test
    // looks in the wrong place and would pass vacuously.
    assert!(
        inputs
            .iter()
            .any(|p| p.to_string_lossy().contains("corpus-seed"))
    );
    assert!(inputs.len() > 40, "only {} inputs found", inputs.len());
    for input in &inputs {
        let bytes = std::fs::read(input).unwrap();
        let outcome = std::panic::catch_unwind(|| basalt_config::fuzzing::exercise(&bytes));
        assert!(
            outcome.is_ok(),
            "{} makes the parser panic",
            input.display()
        );
        // Truncations are cheap extra inputs: half documents hit every error path.
        for cut in [
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len().saturating_sub(1),
        ] {
            let outcome =
                std::panic::catch_unwind(|| basalt_config::fuzzing::exercise(&bytes[..cut]));
            assert!(
                outcome.is_ok(),
                "{} cut at {cut} makes the parser panic",
                input.display()
            );
        }
    }
}

mod mutations {
    use proptest::prelude::*;

    const SEEDS: &[&str] = &[
        include_str!("data/controlplane.yaml"),
        include_str!("data/worker.yaml"),
        include_str!("data/ignition-config-carried.json"),
        include_str!("data/ignition-unsupported.json"),
    ];

    /// Bytes that matter to YAML and JSON, plus some that matter to the value parsers.
    const INTERESTING: &[u8] = b":-[]{}\"',.#&*!|>%@`0123456789 \n\t/\\xX\x00\xff";

    #[derive(Debug, Clone)]
    enum Edit {
        Delete(usize, usize),
        Insert(usize, u8),
        Replace(usize, u8),
        Duplicate(usize, usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let byte = prop_oneof![proptest::sample::select(INTERESTING.to_vec()), any::<u8>()];
        prop_oneof![
            (any::<usize>(), 1usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
            (any::<usize>(), byte.clone()).prop_map(|(at, b)| Edit::Insert(at, b)),
            (any::<usize>(), byte).prop_map(|(at, b)| Edit::Replace(at, b)),
            (any::<usize>(), 1usize..200).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        ]
    }

    fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            let len = bytes.len().max(1);
            match *e {
                Edit::Delete(at, n) => {
                    let at = at % len;
                    let end = (at + n).min(bytes.len());
                    if at < end {
                        bytes.drain(at..end);
                    }
                }
                Edit::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), b),
                Edit::Replace(at, b) => {
                    if !bytes.is_empty() {
                        bytes[at % len] = b;
                    }
                }
                Edit::Duplicate(at, n) => {
                    let at = at % len;
                    let end = (at + n).min(bytes.len());
                    let chunk: Vec<u8> = bytes.get(at..end).unwrap_or_default().to_vec();
                    bytes.splice(at..at, chunk);
                }
            }
        }
        bytes
    }

    proptest! {
        // PROPTEST_CASES=100000 for a longer hunt.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
            ..ProptestConfig::default()
        })]

        /// A poor man's fuzzer for stable: valid documents with a few byte edits.
        #[test]
        fn mutated_documents_never_panic(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec(edit(), 1..6),
        ) {
            let bytes = apply(SEEDS[seed].as_bytes().to_vec(), &edits);
            basalt_config::fuzzing::exercise(&bytes);
        }
    }
}
