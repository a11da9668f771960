//! The engine without HTTP, on a small random Llama whose linear layers are int8 (each output
//! from one weight row and one activation row, so a sequence's logits are the same bits however
//! the batch and the prompt chunks fall): batched paged decoding gives the tokens of lone
//! generation, under chunked prefill, preemption, prefix caching and `n > 1`; cancelling frees
//! the blocks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_llama::{Llama, LlamaConfig};
use kiln_nn::Scope;
use kiln_serve::{Engine, EngineConfig, Event, FinishReason, ServeError, Submission};
use kiln_tensor::quant::QuantScheme;
use kiln_tensor::{DType, Device};
use kiln_zoo::generate::{generate_all, CausalLm, KvDtype, SamplingParams};
use kiln_zoo::Model;

fn model() -> Arc<Llama> {
    let cfg = LlamaConfig {
        max_position_embeddings: 256,
        ..LlamaConfig::tiny()
    };
    let mut m = Llama::new("llama-tiny", cfg, Scope::init(7, DType::F32, Device::Cpu)).unwrap();
    m.quantize(QuantScheme::parse("int8").unwrap()).unwrap();
    Arc::new(m)
}

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 37 + salt * 101 + 11) % 256) as u32)
        .collect()
}

fn params(max: usize, seed: u64, temperature: f64) -> SamplingParams {
    SamplingParams {
        max_new_tokens: max,
        temperature,
        seed,
        ..Default::default()
    }
}

/// Every sample's tokens and finish reason, by sample index.
fn collect(mut sub: Submission, n: usize) -> Vec<(Vec<u32>, FinishReason)> {
    let mut out = vec![(Vec::new(), FinishReason::Length); n];
    let mut done = vec![false; n];
    while let Some(e) = sub.blocking_next() {
        match e {
            Event::Token { sample, token } => {
                assert!(!done[sample], "a token after the end of sample {sample}");
                out[sample].0.push(token.id);
            }
            Event::Finished { sample, reason } => {
                out[sample].1 = reason;
                done[sample] = true;
            }
            Event::Failed(e) => panic!("request failed: {e}"),
        }
    }
    assert!(
        done.iter().all(|&d| d),
        "the stream ended before every sample finished"
    );
    out
}

fn lone(model: &Llama, prompt: &[u32], p: &SamplingParams) -> Vec<u32> {
    generate_all(model as &dyn CausalLm, prompt, p).unwrap()
}

/// An engine whose KV pool stores `f32`, so its tokens are exactly those of `generate`.
fn engine(model: &Arc<Llama>, config: EngineConfig) -> Engine {
    let config = EngineConfig {
        kv_dtype: KvDtype::F32,
        ..config
    };
    Engine::start(model.clone() as Arc<dyn Model>, config).unwrap()
}

#[test]
fn batched_paged_decoding_gives_the_tokens_of_lone_generation() {
    let m = model();
    // Small blocks and a small step budget: prompts are prefilled in chunks across steps,
    // while others decode.
    let e = engine(
        &m,
        EngineConfig {
            block_size: 4,
            max_step_tokens: 16,
            max_running: 8,
            ..Default::default()
        },
    );
    let cases: Vec<(Vec<u32>, SamplingParams)> = (0..8)
        .map(|i| {
            let temperature = if i % 2 == 0 { 0.0 } else { 0.9 };
            (prompt(5 + 7 * i, i), params(12 + i, 100 + i as u64, temperature))
        })
        .collect();
    let subs: Vec<Submission> = cases
        .iter()
        .map(|(p, s)| e.submit(p.clone(), s.clone()).unwrap())
        .collect();
    for (sub, (p, s)) in subs.into_iter().zip(&cases) {
        let got = collect(sub, 1);
        assert_eq!(got[0].0, lone(&m, p, s), "prompt of {} tokens", p.len());
        assert_eq!(got[0].1, FinishReason::Length);
    }
    let stats = e.stats();
    assert_eq!(stats.blocks_in_use, 0, "every block is released: {stats:?}");
    assert_eq!(stats.completed, 8);
    e.shutdown();
}

#[test]
fn gpt_serves_through_the_same_paged_cache() {
    let mut gpt = kiln_gpt::Gpt::new(
        "gpt-tiny",
        kiln_gpt::GptConfig::tiny(),
        Scope::init(3, DType::F32, Device::Cpu),
    )
    .unwrap();
    gpt.quantize(QuantScheme::parse("int8").unwrap()).unwrap();
    let gpt = Arc::new(gpt);
    let e = Engine::start(
        gpt.clone() as Arc<dyn Model>,
        EngineConfig {
            kv_dtype: KvDtype::F32,
            block_size: 4,
            max_step_tokens: 16,
            max_running: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let vocab = gpt.vocab_size() as u32;
    let cases: Vec<(Vec<u32>, SamplingParams)> = (0..4)
        .map(|i| {
            let p: Vec<u32> = prompt(6 + 5 * i, i).iter().map(|t| t % vocab).collect();
            (p, params(10, i as u64, 0.7))
        })
        .collect();
    let subs: Vec<Submission> = cases
        .iter()
        .map(|(p, s)| e.submit(p.clone(), s.clone()).unwrap())
        .collect();
    for (sub, (p, s)) in subs.into_iter().zip(&cases) {
        let want = generate_all(gpt.as_ref() as &dyn CausalLm, p, s).unwrap();
        assert_eq!(collect(sub, 1)[0].0, want);
    }
    // A lone 40-token prompt in chunks of 16: its first steps ask for no logits at all.
    let p: Vec<u32> = prompt(40, 7).iter().map(|t| t % vocab).collect();
    let s = params(8, 3, 0.0);
    let want = generate_all(gpt.as_ref() as &dyn CausalLm, &p, &s).unwrap();
    assert_eq!(collect(e.submit(p, s).unwrap(), 1)[0].0, want);
    assert!(e.is_alive());
}

#[test]
fn an_f16_cache_holds_twice_the_blocks_and_batching_keeps_its_tokens() {
    let m = model();
    let config = |running: usize, kv_dtype: KvDtype| EngineConfig {
        block_size: 4,
        max_step_tokens: 16,
        max_running: running,
        kv_memory_bytes: 1 << 20,
        kv_dtype,
        ..Default::default()
    };
    let start = |c: EngineConfig| Engine::start(m.clone() as Arc<dyn Model>, c).unwrap();
    let cases: Vec<(Vec<u32>, SamplingParams)> = (0..6)
        .map(|i| {
            (
                prompt(5 + 9 * i, i),
                params(14, 200 + i as u64, 0.9 * (i % 2) as f64),
            )
        })
        .collect();
    let run = |e: &Engine| -> Vec<Vec<u32>> {
        let subs: Vec<Submission> = cases
            .iter()
            .map(|(p, s)| e.submit(p.clone(), s.clone()).unwrap())
            .collect();
        subs.into_iter().map(|sub| collect(sub, 1).remove(0).0).collect()
    };
    let (batched, alone) = (start(config(6, KvDtype::F16)), start(config(1, KvDtype::F16)));
    assert_eq!(
        batched.stats().blocks_total,
        2 * start(config(1, KvDtype::F32)).stats().blocks_total,
        "f16 positions take half the bytes"
    );
    // Every sequence reads the same rounded keys and values whether it runs alone or in a
    // batch, in whatever chunks its prompt was prefilled.
    let got = run(&batched);
    assert_eq!(got, run(&alone));
    // Rounding the cache to f16 moves the logits by little: greedy decoding mostly agrees with
    // the f32 cache's (an exact match is not promised).
    let exact: Vec<Vec<u32>> = cases.iter().map(|(p, s)| lone(&m, p, s)).collect();
    let greedy_same = (0..cases.len())
        .step_by(2)
        .filter(|&i| got[i][..4] == exact[i][..4])
        .count();
    assert_eq!(greedy_same, 3, "greedy f16 vs f32: {got:?} vs {exact:?}");
}

#[test]
fn preemption_by_recomputation_keeps_the_tokens() {
    let m = model();
    let shape = kiln_zoo::generate::KvCausalLm::kv_shape(m.as_ref());
    // 12 blocks of 4 positions: four sequences of ~40 tokens cannot all stay resident.
    let e = engine(
        &m,
        EngineConfig {
            block_size: 4,
            kv_memory_bytes: 12 * 4 * shape.bytes_per_position(KvDtype::F32),
            max_step_tokens: 32,
            max_running: 4,
            prefix_caching: false,
            ..Default::default()
        },
    );
    let cases: Vec<(Vec<u32>, SamplingParams)> = (0..4)
        .map(|i| (prompt(10 + i, i), params(30, i as u64, 0.8)))
        .collect();
    let subs: Vec<Submission> = cases
        .iter()
        .map(|(p, s)| e.submit(p.clone(), s.clone()).unwrap())
        .collect();
    for (sub, (p, s)) in subs.into_iter().zip(&cases) {
        assert_eq!(collect(sub, 1)[0].0, lone(&m, p, s));
    }
    let stats = e.stats();
    assert!(stats.preemptions > 0, "the pool was meant to run out: {stats:?}");
    assert_eq!(stats.blocks_in_use, 0);
}

#[test]
fn a_shared_prefix_is_found_in_the_cache_and_changes_nothing() {
    let m = model();
    let e = engine(
        &m,
        EngineConfig {
            block_size: 4,
            ..Default::default()
        },
    );
    let base = prompt(40, 3);
    let mut other = base.clone();
    other.extend(prompt(6, 9));
    let p = params(8, 5, 0.0);
    let first = collect(e.submit(base.clone(), p.clone()).unwrap(), 1);
    assert_eq!(e.stats().prefix_hit_tokens, 0);
    let second = collect(e.submit(other.clone(), p.clone()).unwrap(), 1);
    let stats = e.stats();
    // The 40-token prompt filled 10 blocks; the second prompt shares all of them.
    assert_eq!(stats.prefix_hit_tokens, 40, "{stats:?}");
    assert_eq!(first[0].0, lone(&m, &base, &p));
    assert_eq!(second[0].0, lone(&m, &other, &p));
}

#[test]
fn n_samples_share_the_prompt_and_draw_from_consecutive_seeds() {
    let m = model();
    let e = engine(
        &m,
        EngineConfig {
            block_size: 4,
            ..Default::default()
        },
    );
    // 18 tokens: four full blocks shared, the partial fifth copied per sample.
    let p = prompt(18, 1);
    let s = SamplingParams {
        n: 3,
        ..params(10, 40, 1.0)
    };
    let got = collect(e.submit(p.clone(), s.clone()).unwrap(), 3);
    for (i, (tokens, _)) in got.iter().enumerate() {
        let alone = params(10, 40 + i as u64, 1.0);
        assert_eq!(tokens, &lone(&m, &p, &alone), "sample {i}");
    }
    assert_ne!(got[0].0, got[1].0);
    assert_eq!(e.stats().blocks_in_use, 0);
}

#[test]
fn stop_tokens_end_a_sample_with_reason_stop() {
    let m = model();
    let e = engine(&m, EngineConfig::default());
    let p = prompt(9, 2);
    let free = lone(&m, &p, &params(20, 0, 0.0));
    let stop = free[4];
    let s = SamplingParams {
        stop_tokens: vec![stop],
        ..params(20, 0, 0.0)
    };
    let got = collect(e.submit(p.clone(), s).unwrap(), 1);
    let end = free.iter().position(|&t| t == stop).unwrap();
    assert_eq!(got[0].0, free[..=end]);
    assert_eq!(got[0].1, FinishReason::Stop);
}

#[test]
fn dropping_a_submission_frees_its_blocks() {
    let m = model();
    let e = engine(&m, EngineConfig::default());
    let mut sub = e.submit(prompt(30, 4), params(200, 0, 0.0)).unwrap();
    // Wait until it is decoding.
    for _ in 0..3 {
        assert!(matches!(sub.blocking_next(), Some(Event::Token { .. })));
    }
    assert!(e.stats().blocks_in_use > 0);
    drop(sub);
    let t = Instant::now();
    while e.stats().blocks_in_use > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "blocks still held: {:?}",
            e.stats()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(e.stats().running, 0);
}

#[test]
fn bad_requests_are_refused_up_front() {
    let m = model();
    let e = engine(
        &m,
        EngineConfig {
            max_running: 1,
            max_queue: 1,
            ..Default::default()
        },
    );
    let err = e.submit(prompt(200, 0), params(100, 0, 0.0)).unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::ContextOverflow {
                prompt_tokens: 200,
                max_tokens: 100,
                context: 256
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("256") && err.to_string().contains("300"),
        "{err}"
    );
    assert!(matches!(
        e.submit(vec![], params(1, 0, 0.0)),
        Err(ServeError::InvalidRequest { .. })
    ));
    assert!(matches!(
        e.submit(vec![999], params(1, 0, 0.0)),
        Err(ServeError::InvalidRequest { .. })
    ));
    let bad = SamplingParams {
        temperature: -1.0,
        ..params(4, 0, 0.0)
    };
    assert!(matches!(
        e.submit(vec![1], bad),
        Err(ServeError::InvalidRequest { .. })
    ));
    // One running and one waiting fill the queue; the third is refused.
    let a = e.submit(prompt(10, 0), params(100, 0, 0.0)).unwrap();
    let b = e.submit(prompt(10, 1), params(100, 0, 0.0)).unwrap();
    assert!(matches!(
        e.submit(prompt(10, 2), params(4, 0, 0.0)),
        Err(ServeError::QueueFull { .. })
    ));
    drop((a, b));
    e.shutdown();
    assert!(!e.is_alive());
    assert!(matches!(
        e.submit(vec![1], params(1, 0, 0.0)),
        Err(ServeError::EngineDown(_))
    ));
}
