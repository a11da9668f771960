//! The datasets `cargo xtask train` and `eval` know: where their files are, which task they serve,
//! what they fix about a model (input geometry, vocabulary), and how to load them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use kiln::data::mnist::{Mnist, Split};
use kiln::data::text::books::{self, Author, SpecialIds};
use kiln::data::text::{
    CharTokenizer, InstructionSet, MlmConfig, SequentialBlocks, SftDataset, TextTokenizer, TokenStream,
    Tokenizer,
};
use kiln::data::{Dataset, TensorDataset};
use kiln::zoo::Task;

/// A dataset `train` knows.
pub struct DatasetInfo {
    /// Name on the command line.
    pub name: &'static str,
    /// The task it serves.
    pub task: Task,
    /// Folder or file under the data directory.
    pub path: &'static str,
    /// One line for error messages and help.
    pub about: &'static str,
}

/// Every dataset `train` knows.
pub const DATASETS: &[DatasetInfo] = &[
    DatasetInfo {
        name: "mnist",
        task: Task::ImageClassification,
        path: "mnist",
        about: "MNIST digits, 60k/10k 28x28 grey images",
    },
    DatasetInfo {
        name: "fashion-mnist",
        task: Task::ImageClassification,
        path: "fashion-mnist",
        about: "Fashion-MNIST, 60k/10k 28x28 grey images of clothes",
    },
    DatasetInfo {
        name: "mnist-sequential",
        task: Task::SequenceClassification,
        path: "mnist",
        about: "MNIST read row by row: sequences of 28 steps of 28 pixels",
    },
    DatasetInfo {
        name: "tinyshakespeare-char",
        task: Task::CausalLm,
        path: "text/tinyshakespeare.txt",
        about: "tiny-shakespeare as characters (65 ids), last 10% for validation",
    },
    DatasetInfo {
        name: "shakespeare-mlm",
        task: Task::MaskedLm,
        path: "text",
        about:
            "BERT pre-training (masked LM + next sentence) on Shakespeare's 42 works and Austen's 6 novels, \
                held-out works for validation",
    },
    DatasetInfo {
        name: "authors",
        task: Task::SequenceClassification,
        path: "text",
        about: "Shakespeare or Austen? 2-3 sentence passages, 4000 train / 1000 test from held-out works",
    },
];

/// The sequence length of the BERT datasets (`shakespeare-mlm`, `authors`) unless `--seq-len`
/// says otherwise.
pub const BERT_SEQ_LEN: usize = 128;

/// The WordPiece tokenizer of the BERT datasets, under the data directory (bert-base-uncased's
/// vocabulary, 30522 ids).
pub const BERT_TOKENIZER: &str = "tokenizers/bert-base-uncased/tokenizer.json";

/// The fixed seed of the BERT datasets' draws (pairs, masks, passages, sub-sampling): a dataset
/// is a pure function of its files and sequence length, so `eval` rebuilds the same test set.
const BOOKS_SEED: u64 = 0;

/// Passages of each author in the `authors` training split (4000 in all).
const AUTHORS_TRAIN_PER_CLASS: usize = 2000;

/// Passages of each author in the `authors` test split (1000 in all).
const AUTHORS_TEST_PER_CLASS: usize = 500;

/// The sequence length a dataset uses unless `--seq-len` says otherwise: [`BERT_SEQ_LEN`] for
/// the BERT datasets, [`DEFAULT_SEQ_LEN`] for everything else.
pub fn default_seq_len(dataset: &str) -> usize {
    match dataset {
        "shakespeare-mlm" | "authors" => BERT_SEQ_LEN,
        _ => DEFAULT_SEQ_LEN,
    }
}

/// The data directory: `data` under the current directory (xtask runs from the workspace root
/// through the cargo alias), else the one beside xtask's manifest.
pub fn default_data_dir() -> PathBuf {
    let here = PathBuf::from("data");
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("data")
}

/// The block length of the language-modelling datasets unless `--seq-len` says otherwise.
pub const DEFAULT_SEQ_LEN: usize = 64;

/// The share of a text corpus held out for validation.
const TEXT_VAL_FRACTION: f64 = 0.1;

/// A dataset by name; an unknown name is an error listing the known ones.
pub fn find(name: &str) -> anyhow::Result<&'static DatasetInfo> {
    DATASETS.iter().find(|d| d.name == name).with_context(|| {
        let known: Vec<String> = DATASETS
            .iter()
            .map(|d| format!("{} ({})", d.name, d.about))
            .collect();
        format!("unknown dataset {name:?}; known datasets: {}", known.join("; "))
    })
}

/// A loaded dataset: training and evaluation splits, what it fixes about the model, and the
/// tokenizer of a text dataset (stored in the run directory for `generate`).
pub struct Loaded {
    /// Training examples.
    pub train: Box<dyn Dataset>,
    /// Test (images) or validation (text) examples.
    pub test: Box<dyn Dataset>,
    /// Model config keys the data decides (`in_channels`, `image_size`, `num_classes`, `vocab_size`).
    pub geometry: serde_json::Value,
    /// The tokenizer of a text dataset.
    pub tokenizer: Option<CharTokenizer>,
    /// A tokenizer file to copy into the run directory as `tokenizer.json` (token shards).
    pub tokenizer_file: Option<std::path::PathBuf>,
    /// Reference scores of trivial predictors on the evaluation split, a JSON object (`{}` when
    /// the dataset has none): `shakespeare-mlm` gives `unigram_mlm_accuracy` (always predicting
    /// the most frequent masked token of the training split) and `unigram_token`.
    pub baselines: serde_json::Value,
}

/// Whether `name` is a `prepare-data` output directory (token shards and `meta.json`).
pub fn is_shard_dir(name: &str) -> bool {
    Path::new(name).join("meta.json").is_file()
}

/// Token shards written by `cargo xtask prepare-data`: `train.bin` and `val.bin` cut into
/// consecutive blocks of `seq_len` tokens; the vocabulary from `meta.json`.
pub fn load_shards(dir: &Path, seq_len: usize) -> anyhow::Result<Loaded> {
    let meta_path = dir.join("meta.json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .with_context(|| format!("cannot read {}", meta_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", meta_path.display()))?;
    let vocab = meta["vocab_size"]
        .as_u64()
        .with_context(|| format!("{} has no vocab_size", meta_path.display()))?;
    let tokenizer_file = ["tokenizer.json", "char_tokenizer.json"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
    let open = |name: &str| -> anyhow::Result<SequentialBlocks> {
        let stream = TokenStream::open(dir.join(name))
            .with_context(|| format!("cannot open {}", dir.join(name).display()))?;
        Ok(SequentialBlocks::new(stream, seq_len)?)
    };
    Ok(Loaded {
        train: Box::new(open("train.bin")?),
        test: Box::new(open("val.bin")?),
        geometry: serde_json::json!({ "vocab_size": vocab }),
        tokenizer: None,
        tokenizer_file,
        baselines: serde_json::json!({}),
    })
}

/// Instruction tuning data: the JSONL records of `path`, the last 10% (at least one) held out for
/// validation, tokenized with labels masked on the prompt, cut to `max_len` tokens.
pub fn load_sft(path: &Path, tokenizer: &dyn TextTokenizer, max_len: usize) -> anyhow::Result<Loaded> {
    let set = InstructionSet::load(path, false)
        .with_context(|| format!("loading instructions {}", path.display()))?;
    let n = set.records.len();
    if n < 2 {
        bail!(
            "{} holds {n} instruction records; instruction tuning needs at least 2 (one held out)",
            path.display()
        );
    }
    let held_out = ((n as f64 * TEXT_VAL_FRACTION).round() as usize).clamp(1, n - 1);
    let (train, val) = set.records.split_at(n - held_out);
    let make = |records: &[kiln::data::text::InstructionRecord]| -> anyhow::Result<SftDataset> {
        SftDataset::from_records(records, tokenizer, Some(max_len)).with_context(|| {
            format!(
                "tokenizing {} (does the tokenizer cover its characters?)",
                path.display()
            )
        })
    };
    Ok(Loaded {
        train: Box::new(make(train)?),
        test: Box::new(make(val)?),
        geometry: serde_json::json!({ "vocab_size": tokenizer.vocab_size() }),
        tokenizer: None,
        tokenizer_file: None,
        baselines: serde_json::json!({}),
    })
}

/// Load `info` from `data_dir`; `seq_len` is the block length of language-modelling datasets.
pub fn load(info: &DatasetInfo, data_dir: &Path, seq_len: usize) -> anyhow::Result<Loaded> {
    let path = data_dir.join(info.path);
    let context = || format!("loading dataset {} from {}", info.name, path.display());
    match info.name {
        "tinyshakespeare-char" => load_char_text(&path, seq_len).with_context(context),
        "shakespeare-mlm" | "authors" => {
            load_books(info.name, &path, data_dir, seq_len).with_context(context)
        }
        _ => {
            let train = load_image_split(info, &path, Split::Train).with_context(context)?;
            let test = load_image_split(info, &path, Split::Test).with_context(context)?;
            Ok(Loaded {
                train: Box::new(train),
                test: Box::new(test),
                geometry: serde_json::json!({"in_channels": 1, "image_size": 28, "num_classes": 10}),
                tokenizer: None,
                tokenizer_file: None,
                baselines: serde_json::json!({}),
            })
        }
    }
}

/// The test (image datasets) or validation (text) split alone, for `eval`: an image dataset
/// reads only its test files (not the 60,000 training images).
pub fn load_test(info: &DatasetInfo, data_dir: &Path, seq_len: usize) -> anyhow::Result<Box<dyn Dataset>> {
    match info.name {
        "tinyshakespeare-char" | "shakespeare-mlm" | "authors" => Ok(load(info, data_dir, seq_len)?.test),
        _ => {
            let path = data_dir.join(info.path);
            let test = load_image_split(info, &path, Split::Test)
                .with_context(|| format!("loading dataset {} from {}", info.name, path.display()))?;
            Ok(Box::new(test))
        }
    }
}

/// One split of an IDX image dataset (MNIST layout), normalized; `mnist-sequential` reads each
/// image as a sequence of its rows.
fn load_image_split(info: &DatasetInfo, path: &Path, split: Split) -> anyhow::Result<TensorDataset> {
    let images = Mnist::load(path, split)?.to_dataset(true)?;
    if info.name == "mnist-sequential" {
        as_row_sequences(&images)
    } else {
        Ok(images)
    }
}

/// A character corpus: ids by the sorted set of its characters, the last 10% for validation, both
/// cut into consecutive blocks of `seq_len` tokens (the loader shuffles the training blocks).
fn load_char_text(path: &Path, seq_len: usize) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let tokenizer = CharTokenizer::from_text(&text);
    let ids = tokenizer.encode(&text)?;
    let stream = TokenStream::from_tokens(ids, tokenizer.vocab_size())?;
    let (train, val) = stream.split_validation(TEXT_VAL_FRACTION)?;
    Ok(Loaded {
        train: Box::new(SequentialBlocks::new(train, seq_len)?),
        test: Box::new(SequentialBlocks::new(val, seq_len)?),
        geometry: serde_json::json!({"vocab_size": tokenizer.vocab_size()}),
        tokenizer: Some(tokenizer),
        tokenizer_file: None,
        baselines: serde_json::json!({}),
    })
}

/// The BERT datasets on the books of `text_dir` (`kiln_data::text::books`), tokenized with
/// [`BERT_TOKENIZER`] under `data_dir`:
///
/// - `shakespeare-mlm`: next-sentence pairs of every work (training: the works that are not held
///   out; validation: the held-out ones), masked once (15%, 80/10/10). Inputs `u32 [N, 3, L]`
///   (ids, token types, attention mask), targets `i64 [N, L + 1]` (the MLM labels, -100 where
///   nothing is predicted, then the next-sentence label: 0 = b follows a, 1 = random).
/// - `authors`: `[CLS] passage [SEP]` of 2–3 consecutive sentences, balanced and sub-sampled to
///   4000 training and 1000 test passages; targets `i64 [N]`, 0 = Shakespeare, 1 = Austen.
fn load_books(name: &str, text_dir: &Path, data_dir: &Path, seq_len: usize) -> anyhow::Result<Loaded> {
    if seq_len < 3 {
        bail!("--seq-len {seq_len} is too short for BERT inputs ([CLS] and [SEP] take 2 tokens, pairs 3)");
    }
    let start = Instant::now();
    let tokenizer_file = data_dir.join(BERT_TOKENIZER);
    let tokenizer = Tokenizer::from_file(&tokenizer_file)
        .with_context(|| format!("loading the BERT tokenizer {}", tokenizer_file.display()))?;
    let works = books::load_works(text_dir)?;
    let tokenized = books::tokenize_works(&works, &tokenizer)?;
    let ids = SpecialIds::from_tokenizer(&tokenizer)?;
    let held_out = works.iter().filter(|w| books::is_held_out(w)).count();
    let sentences: usize = works.iter().map(|w| w.sentences.len()).sum();
    let tokens: usize = tokenized.iter().flatten().map(Vec::len).sum();
    let vocab_size = tokenizer.vocab_size();
    let (train, test, geometry, baselines, summary) = if name == "shakespeare-mlm" {
        let mlm = MlmConfig::from_tokenizer(&tokenizer)?;
        let d = books::mlm_nsp_dataset(&works, &tokenized, ids, &mlm, seq_len, BOOKS_SEED)?;
        let token = tokenizer.id_to_token(d.unigram_token).unwrap_or_default();
        println!(
            "unigram baseline: always predicting {token:?} (the most frequent masked token of the training \
             pairs) gives {:.2}% held-out masked-LM accuracy",
            100.0 * d.unigram_accuracy
        );
        let summary = format!(
            "{} train / {} validation pairs, {} / {} masked tokens",
            d.train.len(),
            d.validation.len(),
            d.masked_tokens.0,
            d.masked_tokens.1
        );
        (
            d.train,
            d.validation,
            serde_json::json!({ "vocab_size": vocab_size }),
            serde_json::json!({ "unigram_mlm_accuracy": d.unigram_accuracy, "unigram_token": token }),
            summary,
        )
    } else {
        let d = books::authors_dataset(
            &works,
            &tokenized,
            ids,
            seq_len,
            AUTHORS_TRAIN_PER_CLASS,
            AUTHORS_TEST_PER_CLASS,
            BOOKS_SEED,
        )?;
        let [s, a] = [Author::Shakespeare, Author::Austen].map(Author::name);
        let summary = format!(
            "{} train / {} test passages, balanced (of {} {s} + {} {a} / {} + {} available), \
             {} / {} cut to {seq_len} tokens",
            d.train.len(),
            d.test.len(),
            d.available.0[0],
            d.available.0[1],
            d.available.1[0],
            d.available.1[1],
            d.truncated.0,
            d.truncated.1
        );
        (
            d.train,
            d.test,
            serde_json::json!({ "vocab_size": vocab_size, "num_labels": 2 }),
            serde_json::json!({}),
            summary,
        )
    };
    println!(
        "{name}: {} works ({held_out} held out), {sentences} sentences, {tokens} tokens; {summary}; \
         length {seq_len}; built in {:.1} s",
        works.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(Loaded {
        train: Box::new(train),
        test: Box::new(test),
        geometry,
        tokenizer: None,
        tokenizer_file: Some(tokenizer_file),
        baselines,
    })
}

/// Images `[N, 1, rows, columns]` as sequences `[N, rows, columns]` (one row per time step).
pub fn as_row_sequences(images: &TensorDataset) -> anyhow::Result<TensorDataset> {
    let x = images.inputs();
    let &[n, 1, rows, cols] = x.dims() else {
        bail!("expected grey images [N, 1, rows, columns], found {:?}", x.dims());
    };
    let targets = images.targets().context("the images have no labels")?.clone();
    Ok(TensorDataset::new(x.reshape([n, rows, cols])?, targets)?)
}

/// The config overrides for a model trained on data of `geometry`: the data's value for every key
/// the model's default config has (so `resnet20`, a CIFAR model by default, takes 1×28×28
/// Fashion-MNIST images, and `lstm-lm` gets the corpus's vocabulary), then the user's own
/// overrides on top.
pub fn fit_model_to_data(
    default: &serde_json::Value,
    geometry: &serde_json::Value,
    user: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let (Some(geometry), Some(keys)) = (geometry.as_object(), default.as_object()) {
        for (k, v) in geometry {
            if keys.contains_key(k) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    match user {
        // Not an object: passed on as is, so merge_config reports it.
        Some(u) if !u.is_object() => return u.clone(),
        Some(u) => out.extend(
            u.as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone())),
        ),
        None => {}
    }
    serde_json::Value::Object(out)
}

/// Error unless a dataset serves the model's task.
pub fn check_fits(dataset: &str, data_task: Task, model: &str, model_task: Task) -> anyhow::Result<()> {
    if data_task != model_task {
        bail!("dataset {dataset} is for {data_task}, but model {model} is a {model_task} model");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_sets_the_geometry_and_the_user_has_the_last_word() {
        let default = serde_json::json!({"in_channels": 3, "image_size": 32, "num_classes": 10});
        let geometry = serde_json::json!({"in_channels": 1, "image_size": 28, "num_classes": 10});
        let fitted = fit_model_to_data(&default, &geometry, None);
        assert_eq!(fitted, geometry);
        let user = serde_json::json!({"num_classes": 12});
        let fitted = fit_model_to_data(&default, &geometry, Some(&user));
        assert_eq!(fitted["num_classes"], 12);
        // Keys the model does not have are not invented.
        let fitted = fit_model_to_data(&serde_json::json!({"hidden": 8}), &geometry, None);
        assert_eq!(fitted, serde_json::json!({}));
    }

    #[test]
    fn a_dataset_must_fit_the_models_task() {
        let e = check_fits("mnist", Task::ImageClassification, "gpt2", Task::CausalLm)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mnist") && e.contains("image-classification") && e.contains("causal-lm"),
            "{e}"
        );
        assert!(check_fits(
            "mnist",
            Task::ImageClassification,
            "lenet5",
            Task::ImageClassification
        )
        .is_ok());
    }

    #[test]
    fn unknown_datasets_list_the_known_ones() {
        let e = find("cifar").err().unwrap().to_string();
        assert!(
            e.contains("tinyshakespeare-char") && e.contains("fashion-mnist"),
            "{e}"
        );
    }

    #[test]
    fn mnist_sequential_reads_images_row_by_row() {
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let images = TensorDataset::new(
            kiln::tensor::Tensor::from_vec(x.clone(), [2, 1, 3, 4]).unwrap(),
            kiln::tensor::Tensor::from_vec(vec![3i64, 8], [2]).unwrap(),
        )
        .unwrap();
        let seq = as_row_sequences(&images).unwrap();
        assert_eq!(seq.inputs().dims(), &[2, 3, 4]);
        assert_eq!(seq.inputs().to_vec::<f32>().unwrap(), x);
    }

    #[test]
    fn the_bert_datasets_default_to_128_tokens() {
        assert_eq!(default_seq_len("authors"), 128);
        assert_eq!(default_seq_len("shakespeare-mlm"), 128);
        assert_eq!(default_seq_len("tinyshakespeare-char"), DEFAULT_SEQ_LEN);
        assert_eq!(find("authors").unwrap().task, Task::SequenceClassification);
        assert_eq!(find("shakespeare-mlm").unwrap().task, Task::MaskedLm);
    }

    #[test]
    fn the_bert_datasets_have_the_fixed_tensor_layout() {
        let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        if !data_dir.join(BERT_TOKENIZER).is_file() {
            eprintln!("skipped: no {BERT_TOKENIZER} under {}", data_dir.display());
            return;
        }
        let l = 32;
        let mlm = load(find("shakespeare-mlm").unwrap(), &data_dir, l).unwrap();
        assert_eq!(mlm.geometry, serde_json::json!({"vocab_size": 30522}));
        let b = mlm.test.get_batch(&[0, 1, 2]).unwrap();
        assert_eq!(b.inputs.dims(), &[3, 3, l]);
        assert_eq!(b.inputs.dtype(), kiln::tensor::DType::U32);
        let y = b.targets.unwrap();
        assert_eq!((y.dims(), y.dtype()), (&[3, l + 1][..], kiln::tensor::DType::I64));
        let y = y.to_vec::<i64>().unwrap();
        assert!((0..3).all(|r| matches!(y[r * (l + 1) + l], 0 | 1)));
        let unigram = mlm.baselines["unigram_mlm_accuracy"].as_f64().unwrap();
        assert!(unigram > 0.0 && unigram < 0.2, "{unigram}");

        let authors = load(find("authors").unwrap(), &data_dir, l).unwrap();
        assert_eq!(
            authors.geometry,
            serde_json::json!({"vocab_size": 30522, "num_labels": 2})
        );
        assert_eq!((authors.train.len(), authors.test.len()), (4000, 1000));
        let all: Vec<usize> = (0..1000).collect();
        let b = authors.test.get_batch(&all).unwrap();
        assert_eq!(b.inputs.dims(), &[1000, 3, l]);
        let y = b.targets.unwrap().to_vec::<i64>().unwrap();
        assert_eq!(y.iter().filter(|&&c| c == 1).count(), 500);
        let x = b.inputs.to_vec::<u32>().unwrap();
        // [CLS] first, type ids 0, padding id 0 where the mask is 0.
        for r in 0..1000 {
            let row = &x[r * 3 * l..(r + 1) * 3 * l];
            assert_eq!(row[0], 101);
            assert!(row[l..2 * l].iter().all(|&t| t == 0));
            assert!((0..l).all(|i| row[2 * l + i] == 1 || row[i] == 0));
        }
        assert!(authors.tokenizer_file.unwrap().ends_with("tokenizer.json"));
    }

    #[test]
    fn char_text_blocks_predict_the_next_character() {
        let dir = std::env::temp_dir().join(format!("kiln-xtask-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("corpus.txt");
        std::fs::write(&path, "abc".repeat(20)).unwrap();
        let loaded = load_char_text(&path, 4).unwrap();
        assert_eq!(loaded.geometry, serde_json::json!({"vocab_size": 3}));
        // 60 characters: 54 for training (13 blocks of 4), the last 6 for validation (1 block).
        assert_eq!((loaded.train.len(), loaded.test.len()), (13, 1));
        let b = loaded.train.get_batch(&[0, 1]).unwrap();
        let x = b.inputs.to_vec::<i64>().unwrap();
        let y = b.targets.unwrap().to_vec::<i64>().unwrap();
        assert_eq!(x, vec![0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(y, vec![1, 2, 0, 1, 2, 0, 1, 2]);
        // Validation starts at character 54 ("a").
        let v = loaded
            .test
            .get_batch(&[0])
            .unwrap()
            .inputs
            .to_vec::<i64>()
            .unwrap();
        assert_eq!(v, vec![0, 1, 2, 0]);
        // A corpus too short for one block is an error, not a panic.
        std::fs::write(&path, "ab").unwrap();
        assert!(load_char_text(&path, 4).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
