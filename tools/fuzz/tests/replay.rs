//! Replays every seed (`corpus/<target>/`) and every past crash (`regressions/<target>/`)
//! through its target, as a plain host test: no AFL, a few seconds. A target that panics on any
//! of them fails the test, which names the file.

use std::path::Path;

#[test]
fn every_corpus_entry_and_past_crash_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let mut replayed = 0;
    for target in fuzz::TARGETS {
        let corpus = fuzz::inputs(&root.join("corpus").join(target.name));
        assert!(!corpus.is_empty(), "target {} has no seed corpus", target.name);
        let regressions = fuzz::inputs(&root.join("regressions").join(target.name));
        replayed += corpus.len() + regressions.len();
        failures.extend(fuzz::replay(target.run, &corpus));
        failures.extend(fuzz::replay(target.run, &regressions));
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} inputs panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("replayed {replayed} inputs through {} targets", fuzz::TARGETS.len());
}

fn refuses_a_zero_byte(data: &[u8]) {
    assert!(!data.contains(&0), "a zero byte");
}

#[test]
fn a_panic_in_a_target_is_reported_with_its_file() {
    let directory = std::env::temp_dir().join(format!("tessera-replay-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::write(directory.join("a-clean"), b"abc").unwrap();
    std::fs::write(directory.join("b-crash"), b"a\0c").unwrap();
    std::fs::write(directory.join(".hidden"), b"\0").unwrap();
    let files = fuzz::inputs(&directory);
    assert_eq!(files.len(), 2, "hidden files are not inputs");
    let failures = fuzz::replay(refuses_a_zero_byte, &files);
    std::fs::remove_dir_all(&directory).unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("b-crash") && failures[0].contains("a zero byte"), "{failures:?}");
}

/// The seeds reach deep: the cards mount and hold what `make-seeds.sh` put on them, and the
/// model seeds prepare. (A seed the parsers refuse at once would leave the fuzzer at the door.)
#[test]
fn the_seeds_are_accepted_whole() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let card = std::fs::read(corpus.join("fat32/mtools-card")).unwrap();
    let mut volume = kernel::fs::Volume::mount(fuzz::card::SparseCard::parse(&card)).unwrap();
    let mut file = volume.open("/docs/A file with a Long Name.txt").unwrap();
    let mut text = [0u8; 64];
    let read = file.read_at(0, &mut text).unwrap();
    assert_eq!(&text[..read], b"a long name\n");
    for seed in
        ["chat", "chat-stream", "chat-stop", "chat-parts", "chat-long", "completion", "completion-array"]
    {
        let request = std::fs::read(corpus.join("gateway").join(seed)).unwrap();
        let examined = cli::intake::examine(&request, &cli::intake::DEFAULT_LIMITS);
        assert!(matches!(examined, Ok(cli::intake::Examined::Generation(_))), "{seed}: {examined:?}");
    }
    let models = kernel::serve::library::list_models(&mut volume).unwrap();
    assert_eq!(models.iter().map(|model| model.name.as_str()).collect::<Vec<_>>(), ["stories-tiny.bin"]);
    let card = std::fs::read(corpus.join("fat32/sdimage-card")).unwrap();
    let mut volume = kernel::fs::Volume::mount(fuzz::card::SparseCard::parse(&card)).unwrap();
    assert!(volume.open("/tessera.cfg").unwrap().size() > 0);

    for path in fuzz::inputs(&corpus.join("gguf")) {
        let bytes = std::fs::read(&path).unwrap();
        let prepared = kernel::serve::prepare::Preparation::<Vec<u8>>::run::<kernel::model::ModelError>(
            &bytes,
            &mut |size| Ok(vec![0; size]),
        );
        assert!(prepared.is_ok(), "{}: {:?}", path.display(), prepared.err());
    }
    for path in fuzz::inputs(&corpus.join("devicetree")) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            kernel::devicetree::facts(&bytes).is_ok() != path.ends_with("rpi3-nested-40.dtb"),
            "{}",
            path.display()
        );
    }
}
