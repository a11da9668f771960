//! `cargo xtask baseline`: the scores of simple models on a dataset, to read a trained model's
//! against.
//!
//! - `authors`: a bag-of-words logistic regression. Features: the binary presence of the
//!   `--features` WordPiece tokens found in the most training passages (`[CLS]` and `[SEP]`
//!   left out); one linear layer to the two classes, cross-entropy, full-batch AdamW for
//!   `--steps` steps from a fixed seed, all with kiln itself. It prints the training and test
//!   accuracy, and the majority-class accuracy (50%: the splits are balanced).
//! - `shakespeare-mlm`: the unigram masked-LM baseline (always the most frequent masked token of
//!   the training pairs) and the majority next-sentence label, on the held-out pairs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use kiln::autograd::Var;
use kiln::data::text::books::SpecialIds;
use kiln::data::text::Tokenizer;
use kiln::data::Dataset;
use kiln::nn::layers::Linear;
use kiln::nn::loss::{cross_entropy, CrossEntropyOptions, Target};
use kiln::nn::{Module, Scope};
use kiln::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};
use kiln::tensor::{DType, Device, Tensor};

use crate::datasets;

/// Options of `cargo xtask baseline`.
#[derive(clap::Args)]
pub struct BaselineArgs {
    /// The dataset: `authors` (bag-of-words logistic regression) or `shakespeare-mlm` (unigram
    /// masked-LM baseline).
    #[arg(long, default_value = "authors")]
    dataset: String,
    /// Sequence length of the dataset's examples (default: the dataset's, 128 for both).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Data directory (default: `data`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Size of the bag of words: the tokens found in the most training passages.
    #[arg(long, default_value_t = 5000)]
    features: usize,
    /// Full-batch AdamW steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Seed of the layer's initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Run `cargo xtask baseline`: load the dataset and print its baselines.
pub fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let info = datasets::find(&args.dataset)?;
    let seq_len = args
        .seq_len
        .unwrap_or_else(|| datasets::default_seq_len(&args.dataset));
    let data_dir = args.data_dir.clone().unwrap_or_else(datasets::default_data_dir);
    let data = datasets::load(info, &data_dir, seq_len)?;
    match info.name {
        "authors" => bag_of_words(&args, &data),
        "shakespeare-mlm" => unigram(&data, seq_len),
        other => bail!("no baseline for dataset {other}; baselines exist for authors and shakespeare-mlm"),
    }
}

/// All of a dataset's examples as (inputs, targets).
fn everything(set: &dyn Dataset) -> anyhow::Result<(Tensor, Tensor)> {
    let all: Vec<usize> = (0..set.len()).collect();
    let batch = set.get_batch(&all)?;
    Ok((batch.inputs, batch.targets.context("the dataset has no targets")?))
}

/// The real tokens (attention mask 1) of each example of BERT inputs `u32 [N, 3, L]`.
fn token_rows(inputs: &Tensor) -> anyhow::Result<Vec<Vec<u32>>> {
    let &[n, 3, l] = inputs.dims() else {
        bail!("expected BERT inputs [N, 3, L], found {:?}", inputs.dims());
    };
    let x = inputs.to_vec::<u32>()?;
    Ok((0..n)
        .map(|r| {
            let row = &x[r * 3 * l..(r + 1) * 3 * l];
            let len = row[2 * l..].iter().filter(|&&m| m == 1).count();
            row[..len].to_vec()
        })
        .collect())
}

/// Binary presence features `f32 [N, F]` of `vocab` (token id -> column) in `rows`.
fn presence(rows: &[Vec<u32>], vocab: &std::collections::HashMap<u32, usize>) -> anyhow::Result<Tensor> {
    let f = vocab.len();
    let mut x = vec![0f32; rows.len() * f];
    for (r, row) in rows.iter().enumerate() {
        for id in row {
            if let Some(&c) = vocab.get(id) {
                x[r * f + c] = 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(x, [rows.len(), f])?)
}

/// The share of rows of `logits` whose largest entry is the label.
fn accuracy(logits: &Tensor, labels: &[i64]) -> anyhow::Result<f64> {
    let predicted = logits.argmax(1, false)?.to_vec::<i64>()?;
    let right = predicted.iter().zip(labels).filter(|(p, y)| p == y).count();
    Ok(right as f64 / labels.len().max(1) as f64)
}

fn bag_of_words(args: &BaselineArgs, data: &datasets::Loaded) -> anyhow::Result<()> {
    let tokenizer_file = data
        .tokenizer_file
        .as_ref()
        .context("the dataset names no tokenizer")?;
    let tokenizer = Tokenizer::from_file(tokenizer_file)?;
    let ids = SpecialIds::from_tokenizer(&tokenizer)?;
    let (train_x, train_y) = everything(data.train.as_ref())?;
    let (test_x, test_y) = everything(data.test.as_ref())?;
    let (train_rows, test_rows) = (token_rows(&train_x)?, token_rows(&test_x)?);
    let (train_y, test_y) = (train_y.to_vec::<i64>()?, test_y.to_vec::<i64>()?);

    // The vocabulary: tokens by the number of training passages holding them (ties: lower id).
    let mut passages_with = std::collections::HashMap::<u32, usize>::new();
    for row in &train_rows {
        let mut seen: Vec<u32> = row
            .iter()
            .copied()
            .filter(|&t| t != ids.cls && t != ids.sep)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            *passages_with.entry(t).or_default() += 1;
        }
    }
    let mut ranked: Vec<(u32, usize)> = passages_with.into_iter().collect();
    ranked.sort_unstable_by_key(|&(t, n)| (std::cmp::Reverse(n), t));
    ranked.truncate(args.features);
    let vocab: std::collections::HashMap<u32, usize> =
        ranked.iter().enumerate().map(|(c, &(t, _))| (t, c)).collect();
    let features = vocab.len();
    let x_train = Var::constant(presence(&train_rows, &vocab)?);
    let x_test = presence(&test_rows, &vocab)?;
    let target = Target::Indices(Tensor::from_vec(train_y.clone(), [train_y.len()])?);

    let scope = Scope::init(args.seed, DType::F32, Device::Cpu);
    let layer = Linear::new(scope.sub("fc"), features, 2)?;
    let mut optimizer = AdamW::new(
        vec![ParamGroup::new(layer.parameters())],
        AdamWConfig {
            lr: args.lr,
            weight_decay: args.weight_decay,
            ..Default::default()
        },
    )?;
    let start = std::time::Instant::now();
    let mut loss_value = f64::NAN;
    for step in 0..args.steps {
        let loss = cross_entropy(
            &layer.forward(&x_train)?,
            &target,
            &CrossEntropyOptions::default(),
        )?;
        loss_value = loss.value().to_vec::<f32>()?[0] as f64;
        let grads = loss.backward()?;
        optimizer.step(&grads)?;
        if step == 0 || (step + 1) % 100 == 0 {
            println!("step {}/{}: training loss {loss_value:.4}", step + 1, args.steps);
        }
    }
    let _guard = kiln::autograd::no_grad();
    let train_acc = accuracy(layer.forward(&x_train)?.value(), &train_y)?;
    let test_acc = accuracy(layer.forward(&Var::constant(x_test))?.value(), &test_y)?;

    println!(
        "trained on {} passages with {features} binary token features, {} AdamW steps (lr {}, weight decay {}) \
         in {:.1} s: final training loss {loss_value:.4}, training accuracy {:.2}%",
        train_y.len(),
        args.steps,
        args.lr,
        args.weight_decay,
        start.elapsed().as_secs_f64(),
        100.0 * train_acc
    );
    let majority = test_y
        .iter()
        .filter(|&&y| y == 1)
        .count()
        .max(test_y.iter().filter(|&&y| y == 0).count());
    println!(
        "majority class: test accuracy {:.2}%",
        100.0 * majority as f64 / test_y.len().max(1) as f64
    );
    println!(
        "bag-of-words logistic regression: test accuracy {:.2}% ({} test passages)",
        100.0 * test_acc,
        test_y.len()
    );
    Ok(())
}

fn unigram(data: &datasets::Loaded, seq_len: usize) -> anyhow::Result<()> {
    let (_, targets) = everything(data.test.as_ref())?;
    let t = targets.to_vec::<i64>()?;
    let n = t.len() / (seq_len + 1);
    let is_next = (0..n).filter(|&r| t[r * (seq_len + 1) + seq_len] == 0).count();
    let majority = is_next.max(n - is_next) as f64 / n.max(1) as f64;
    let accuracy = data.baselines["unigram_mlm_accuracy"]
        .as_f64()
        .context("the dataset gives no unigram baseline")?;
    println!(
        "unigram masked-LM baseline: held-out accuracy {:.2}% (always {}); majority next-sentence label: \
         {:.2}% ({n} held-out pairs)",
        100.0 * accuracy,
        data.baselines["unigram_token"],
        100.0 * majority
    );
    Ok(())
}
