//! End-to-end tests of `tessera-sdimage`: images built by the binary and the library, read back
//! through the kernel's own FAT32 reader, with their size and sparseness checked.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kernel::fs::Volume;
use sdimage::device::ImageDevice;
use sdimage::image::{master_boot_record, write_image};
use sdimage::options::Options;
use sdimage::plan::{DEFAULT_CONFIG, plan};

/// A fresh scratch folder for one test, inside Cargo's target folder.
fn scratch(name: &str) -> PathBuf {
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sdimage-{name}"));
    let _ = fs::remove_dir_all(&folder);
    fs::create_dir_all(&folder).unwrap();
    folder
}

/// Deterministic test bytes.
fn pattern(seed: u32, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as u8
        })
        .collect()
}

/// Reads a whole file of the image through `kernel::fs`, in 64 KiB chunks.
fn read_back(volume: &mut Volume<ImageDevice>, path: &str) -> Vec<u8> {
    let mut file = volume.open(path).unwrap_or_else(|error| panic!("{path}: {error}"));
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let count = file.read_chunk(&mut buffer).unwrap();
        if count == 0 {
            return bytes;
        }
        bytes.extend_from_slice(&buffer[..count]);
    }
}

fn run_tool(arguments: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera-sdimage")).args(arguments).output().unwrap()
}

#[test]
fn image_built_by_the_binary_reads_back_through_kernel_fs() {
    let folder = scratch("end-to-end");
    let kernel = folder.join("kernel8.img");
    fs::write(&kernel, pattern(1, 70_001)).unwrap();
    let model = folder.join("SmolLM2-135M-Instruct-Q4_1.gguf");
    fs::write(&model, pattern(2, 300_000)).unwrap();
    let second = folder.join("tiny.bin");
    fs::write(&second, pattern(3, 512)).unwrap();
    let firmware = folder.join("firmware");
    fs::create_dir_all(firmware.join("overlays")).unwrap();
    fs::write(firmware.join("bootcode.bin"), pattern(4, 5000)).unwrap();
    fs::write(firmware.join("start.elf"), pattern(5, 9000)).unwrap();
    fs::write(firmware.join("overlays/disable-bt.dtbo"), pattern(6, 100)).unwrap();
    let budget = folder.join("tessera.cfg");
    fs::write(&budget, "llm_budget_mib=64\n").unwrap();
    let image = folder.join("sd.img");
    let path = |path: &Path| path.to_str().unwrap().to_string();
    let output = run_tool(&[
        &path(&image),
        "--kernel",
        &path(&kernel),
        "--model",
        &path(&model),
        "--model",
        &path(&second),
        "--firmware",
        &path(&firmware),
        "--file",
        &format!("{}:/tessera.cfg", path(&budget)),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("read every file back"), "{stdout}");

    let mut volume = Volume::mount(ImageDevice::open(&image).unwrap()).unwrap();
    let mut root: Vec<String> =
        volume.list("/").unwrap().iter().map(|entry| entry.name().to_string()).collect();
    root.sort();
    assert_eq!(
        root,
        ["bootcode.bin", "config.txt", "kernel8.img", "models", "overlays", "start.elf", "tessera.cfg"]
    );
    let models: Vec<String> =
        volume.list("/models").unwrap().iter().map(|entry| entry.name().to_string()).collect();
    assert_eq!(models, ["SmolLM2-135M-Instruct-Q4_1.gguf", "tiny.bin"]);
    assert_eq!(read_back(&mut volume, "/kernel8.img"), pattern(1, 70_001));
    assert_eq!(read_back(&mut volume, "/config.txt"), DEFAULT_CONFIG.as_bytes());
    assert_eq!(read_back(&mut volume, "/models/smollm2-135m-instruct-q4_1.gguf"), pattern(2, 300_000));
    assert_eq!(read_back(&mut volume, "/models/tiny.bin"), pattern(3, 512));
    assert_eq!(read_back(&mut volume, "/bootcode.bin"), pattern(4, 5000));
    assert_eq!(read_back(&mut volume, "/overlays/disable-bt.dtbo"), pattern(6, 100));
    assert_eq!(read_back(&mut volume, "/tessera.cfg"), b"llm_budget_mib=64\n");
    let extents = volume.open("/models/SmolLM2-135M-Instruct-Q4_1.gguf").unwrap().extents().len();
    assert_eq!(extents, 1, "a model written in one go is one run of blocks");

    let metadata = fs::metadata(&image).unwrap();
    assert_eq!(metadata.len(), 64 << 20, "the smallest image that fits");
    let mut mbr = [0u8; 512];
    mbr.copy_from_slice(&fs::read(&image).unwrap()[..512]);
    assert_eq!(mbr, master_boot_record(64 << 20));
    assert_eq!(mbr[446 + 4], 0x0C);
    assert_eq!(u32::from_le_bytes(mbr[454..458].try_into().unwrap()), 2048);
    fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn sizes_are_powers_of_two_and_the_4g_image_is_sparse() {
    let folder = scratch("sparse");
    let kernel = folder.join("kernel8.img");
    fs::write(&kernel, pattern(7, 4096)).unwrap();
    let model = folder.join("model.gguf");
    fs::write(&model, pattern(8, 1 << 20)).unwrap();
    let options = |output: &str, size: Option<u64>| Options {
        output: folder.join(output),
        kernel: kernel.clone(),
        models: vec![model.clone()],
        size,
        ..Options::default()
    };

    let default_plan = plan(&options("default.img", None)).unwrap();
    assert_eq!(default_plan.image_bytes, 64 << 20);
    let sized_plan = plan(&options("sized.img", Some(4 << 30))).unwrap();
    assert_eq!(sized_plan.cluster_bytes, 4096);
    for plan in [&default_plan, &sized_plan] {
        write_image(plan, false).unwrap();
        let metadata = fs::metadata(&plan.output).unwrap();
        assert_eq!(metadata.len(), plan.image_bytes);
        assert!(metadata.len().is_power_of_two());
        let mut volume = Volume::mount(ImageDevice::open(&plan.output).unwrap()).unwrap();
        assert_eq!(volume.layout().blocks_per_cluster, u64::from(plan.cluster_bytes) / 512);
        assert_eq!(read_back(&mut volume, "/models/model.gguf"), pattern(8, 1 << 20));
    }
    let allocated = fs::metadata(&sized_plan.output).unwrap().blocks() * 512;
    assert!(allocated < 16 << 20, "a 4 GiB image allocates {allocated} bytes; it should be sparse");

    let error = plan(&options("bad.img", Some(100 << 20))).unwrap_err().to_string();
    assert!(error.contains("not a power of two"), "{error}");
    let error = plan(&options("small.img", Some(32 << 20))).unwrap_err().to_string();
    assert!(error.contains("from 64M"), "{error}");
    fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn content_too_large_for_the_size_is_refused() {
    let folder = scratch("too-large");
    let kernel = folder.join("kernel8.img");
    fs::write(&kernel, b"k").unwrap();
    let model = folder.join("big.gguf");
    // A sparse 70 MiB model: it costs no disk, but does not fit a 64 MiB image.
    fs::File::create(&model).unwrap().set_len(70 << 20).unwrap();
    let options = Options {
        output: folder.join("out.img"),
        kernel,
        models: vec![model],
        size: Some(64 << 20),
        ..Options::default()
    };
    let error = plan(&options).unwrap_err().to_string();
    assert!(error.contains("the content needs 70.0 MiB but a 64.0 MiB image holds about"), "{error}");
    let default = plan(&Options { size: None, ..options }).unwrap();
    assert_eq!(default.image_bytes, 128 << 20);
    fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn the_binary_explains_bad_input() {
    let folder = scratch("errors");
    let image = folder.join("out.img");
    let image = image.to_str().unwrap();

    let output = run_tool(&["--help"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("--firmware DIR"));

    let output = run_tool(&[image]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--kernel is required"));

    let output = run_tool(&[image, "--kernel", "/nonexistent/kernel8.img"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read kernel /nonexistent/kernel8.img"), "{stderr}");

    let kernel = folder.join("kernel8.img");
    fs::write(&kernel, b"k").unwrap();
    let kernel = kernel.to_str().unwrap();
    let output = run_tool(&[image, "--kernel", kernel, "--file", &format!("{kernel}:/KERNEL8.IMG")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("two files would be written to /kernel8.img"), "{stderr}");

    let output = run_tool(&[image, "--kernel", kernel, "--size", "100M"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(!Path::new(image).exists(), "nothing is written when the input is wrong");
    fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn large_files_show_progress() {
    let folder = scratch("progress");
    let kernel = folder.join("kernel8.img");
    fs::write(&kernel, b"k").unwrap();
    let model = folder.join("big.gguf");
    // A sparse 9 MiB model of zeros: large enough for progress, cheap to copy.
    fs::File::create(&model).unwrap().set_len(9 << 20).unwrap();
    let image = folder.join("out.img");
    let output = run_tool(&[
        image.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| line.contains("/models/big.gguf")).collect();
    assert_eq!(lines.len(), 4, "one line per quarter when stderr is not a terminal: {stderr}");
    assert!(lines[0].contains(" 25%") || lines[0].contains(" 33%"), "{}", lines[0]);
    assert!(lines[3].ends_with("100%  9.0 MiB of 9.0 MiB"), "{}", lines[3]);
    fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn builds_repeat_byte_for_byte_with_source_date_epoch() {
    let folder = scratch("reproducible");
    let kernel = folder.join("kernel8.img");
    fs::write(&kernel, pattern(9, 10_000)).unwrap();
    let build = |name: &str| {
        let image = folder.join(name);
        let output = Command::new(env!("CARGO_BIN_EXE_tessera-sdimage"))
            .args([image.to_str().unwrap(), "--kernel", kernel.to_str().unwrap()])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        fs::read(image).unwrap()
    };
    let first = build("first.img");
    assert!(first == build("second.img"), "two builds of the same input differ");
    fs::remove_dir_all(&folder).unwrap();
}
