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
