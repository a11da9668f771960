use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::data::TensorDataset;
use kiln::nn::Scope;
use kiln::tensor::{DType, Device, Tensor};
use kiln::train::checkpoint::{MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use kiln::train::{OptimizerConfig, ProgressMode, TrainConfig, Trainer, TrainerState};

/// A LeNet-5 checkpoint after one step, as the base every input changes one file of.
struct Base {
    /// The directory inputs are written to (one per process).
    dir: PathBuf,
    state: Vec<u8>,
    model: Vec<u8>,
    optimizer: Vec<u8>,
    data: TensorDataset,
}

/// Batches of 4 over 8 examples; the base stops after one step (mid-epoch), a resumed trainer
/// runs to the end of the first epoch (at most two steps, whatever the state says).
fn config(out: Option<PathBuf>, max_steps: Option<usize>) -> TrainConfig {
    TrainConfig {
        batch_size: 4,
        max_steps,
        epochs: Some(1),
        progress: ProgressMode::Off,
        tensorboard: false,
        out_dir: out,
        ..Default::default()
    }
}

fn trainer(out: Option<PathBuf>, max_steps: Option<usize>) -> Trainer {
    let entry = kiln::find_model("lenet5").expect("lenet5 is registered");
    let cfg = kiln::zoo::merge_config(entry, None).expect("lenet5's default config");
    let model = (entry.build)(&cfg, Scope::init(0, DType::F32, Device::Cpu)).expect("lenet5 builds");
    let opt = OptimizerConfig::by_name("adam", 1e-3)
        .and_then(|o| o.build(model.parameters()))
        .expect("adam builds");
    Trainer::new(model, opt, config(out, max_steps)).expect("a valid trainer config")
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("kiln-fuzz-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pixels: Vec<f32> = (0..8 * 28 * 28).map(|i| ((i * 7) % 13) as f32 / 13.0).collect();
        let inputs = Tensor::from_vec(pixels, [8, 1, 28, 28]).expect("pixels");
        let labels = Tensor::from_vec((0..8i64).collect::<Vec<_>>(), [8]).expect("labels");
        let data = TensorDataset::new(inputs, labels).expect("a dataset");
        let mut t = trainer(Some(root.join("run")), Some(1));
        t.fit(&data, None).expect("one step trains");
        let ckpt = t.save_checkpoint(None).expect("a checkpoint");
        let read = |f: &str| std::fs::read(ckpt.join(f)).expect("the checkpoint's files");
        let dir = root.join("input");
        std::fs::create_dir_all(&dir).expect("the input directory");
        Base {
            state: read(STATE_FILE),
            model: read(MODEL_FILE),
            optimizer: read(OPTIMIZER_FILE),
            dir,
            data,
        }
    })
}

/// The checkpoint loader: the first byte picks the file the rest replaces in a valid LeNet-5
/// checkpoint (0: `trainer_state.json`; 1: `model.safetensors`, 2: `optimizer.safetensors`,
/// whose recorded size and checksum are then updated so that the loader reads past them). A
/// trainer resumes from it (or refuses it); resumed, it must train on.
pub fn checkpoint(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let b = base();
    let (mut state, mut model, mut optimizer) = (b.state.clone(), b.model.as_slice(), b.optimizer.as_slice());
    match which % 3 {
        0 => state = rest.to_vec(),
        n => {
            let (file, bytes) = if n == 1 {
                (MODEL_FILE, rest)
            } else {
                (OPTIMIZER_FILE, rest)
            };
            if n == 1 {
                model = bytes;
            } else {
                optimizer = bytes;
            }
            let mut st: TrainerState = serde_json::from_slice(&state).expect("the base state parses");
            let info = st.files.get_mut(file).expect("the base state records its files");
            info.bytes = bytes.len() as u64;
            info.crc32c = crc32c::crc32c(bytes);
            state = serde_json::to_vec(&st).expect("a state serializes");
        }
    }
    write(&b.dir, STATE_FILE, &state);
    write(&b.dir, MODEL_FILE, model);
    write(&b.dir, OPTIMIZER_FILE, optimizer);
    let mut t = trainer(None, None);
    if t.resume(&b.dir).is_ok() {
        let _ = t.fit(&b.data, None);
    }
}

/// The base checkpoint's three files as inputs (selector byte, then the file).
pub fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let b = base();
    [&b.state, &b.model, &b.optimizer]
        .iter()
        .enumerate()
        .map(|(i, bytes)| [&[i as u8][..], bytes].concat())
        .collect()
}

fn write(dir: &Path, file: &str, bytes: &[u8]) {
    std::fs::write(dir.join(file), bytes).expect("the fuzz directory is writable");
}
