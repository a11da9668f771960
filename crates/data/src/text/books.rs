//! Two authors' books as BERT data: Shakespeare's 42 works and Jane Austen's six novels.
//!
//! [`load_works`] reads `shakespeare_plays_gutenberg.txt.gz` and the six
//! `janeausten_*.txt.gz` files of a text directory (the repository's `data/text/`), cuts the
//! Shakespeare collection into its works by title (a title line followed by
//! `by William Shakespeare`), cleans every work and splits it into sentences:
//!
//! - Project Gutenberg boilerplate goes (`*** START OF` / `*** END OF` markers, lines naming
//!   Project Gutenberg, `<<...>>` licence blocks), and so do front and back matter: the cast
//!   list of a play (from `PERSONS REPRESENTED` / `Dramatis Personae` to the paragraph that
//!   names the scene), everything of a novel before its first chapter heading, and Northanger
//!   Abbey's modern `A NOTE ON THE TEXT`.
//! - Headings (`ACT I.`, `SCENE 2. ...`, `Chapter 3`), every line without a lowercase letter
//!   (upper-case speaker names, `THE END`, `VOLUME I`, sonnet numerals), mixed-case speaker
//!   lines (`Ham.`, `First Citizen.`: the first line of a paragraph, at most four capitalised
//!   words ending in a period), `Finis`, and bracketed stage directions (`[Exit.]`, over several
//!   lines too) are dropped; `_emphasis_` underscores are removed.
//! - Each paragraph (lines between blank lines: a speech, a stanza, a paragraph of prose) has its
//!   whitespace collapsed (a verse line break becomes a space) and is split into sentences by
//!   [`split_sentences`]; sentences never cross paragraphs.
//!
//! The train / held-out split is fixed by work ([`is_held_out`]): Austen's *Persuasion* and
//! *Northanger Abbey*, and every fifth Shakespeare work in file order ([`HELD_OUT_SHAKESPEARE`],
//! 8 of 42: *Coriolanus*, *Henry V*, *King John*, *Macbeth*, *Much Ado About Nothing*, *The
//! Rape of Lucrece*, *The Taming of the Shrew*, *Twelfth Night*). Held-out works are never used
//! for training.
//!
//! On top of the works, [`tokenize_works`] encodes every sentence with a WordPiece tokenizer,
//! [`mlm_nsp_dataset`] builds BERT pre-training examples (next-sentence pairs, static MLM
//! masking) and [`authors_dataset`] a balanced author-classification set of 2–3 sentence
//! passages. Both lay inputs out as `u32 [N, 3, L]` (token ids, token type ids, attention mask;
//! padding is the pad id, type 0, mask 0). Every random choice comes from a seeded
//! [`TensorRng`], so the same files and settings give the same tensors on every machine.

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use kiln_tensor::{Tensor, TensorRng};
use rayon::prelude::*;

use super::{format_error, invalid, io_error, nsp_pairs, MlmConfig, Tokenizer, IGNORE_INDEX};
use crate::{Result, TensorDataset};

/// The gzip file holding the 42 Gutenberg Shakespeare texts, one after the other.
pub const SHAKESPEARE_FILE: &str = "shakespeare_plays_gutenberg.txt.gz";

/// Austen's six novels: (gzip file, title), in alphabetical order of the file.
pub const AUSTEN_FILES: [(&str, &str); 6] = [
    ("janeausten_emma.txt.gz", "Emma"),
    ("janeausten_mansfieldpark.txt.gz", "Mansfield Park"),
    ("janeausten_northangerabbey.txt.gz", "Northanger Abbey"),
    ("janeausten_persuasion.txt.gz", "Persuasion"),
    ("janeausten_prideprejudice.txt.gz", "Pride and Prejudice"),
    ("janeausten_sensesensibility.txt.gz", "Sense and Sensibility"),
];

/// The held-out Shakespeare works, as titled in the file: every fifth work in file order (the
/// 5th, 10th, ..., 40th of 42).
pub const HELD_OUT_SHAKESPEARE: [&str; 8] = [
    "THE TRAGEDY OF CORIOLANUS",
    "THE LIFE OF KING HENRY V",
    "KING JOHN",
    "MACBETH",
    "MUCH ADO ABOUT NOTHING",
    "THE RAPE OF LUCRECE",
    "THE TAMING OF THE SHREW",
    "TWELFTH NIGHT; OR, WHAT YOU WILL",
];

/// The held-out Austen novels.
pub const HELD_OUT_AUSTEN: [&str; 2] = ["Northanger Abbey", "Persuasion"];

/// Who wrote a work; the class label of the author-classification task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Author {
    /// William Shakespeare (label 0).
    Shakespeare,
    /// Jane Austen (label 1).
    Austen,
}

impl Author {
    /// The class label: 0 for Shakespeare, 1 for Austen.
    pub fn label(self) -> i64 {
        match self {
            Author::Shakespeare => 0,
            Author::Austen => 1,
        }
    }

    /// The author's name.
    pub fn name(self) -> &'static str {
        match self {
            Author::Shakespeare => "Shakespeare",
            Author::Austen => "Austen",
        }
    }
}

/// One cleaned work: its title, author and sentences in reading order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    /// The title (Shakespeare's as in the file, e.g. `"THE TEMPEST"`; Austen's from
    /// [`AUSTEN_FILES`]).
    pub title: String,
    /// The author.
    pub author: Author,
    /// The sentences, whitespace collapsed, in order.
    pub sentences: Vec<String>,
}

/// Whether `work` belongs to the fixed held-out split (see the [module documentation](self)).
pub fn is_held_out(work: &Work) -> bool {
    match work.author {
        Author::Shakespeare => HELD_OUT_SHAKESPEARE.contains(&work.title.as_str()),
        Author::Austen => HELD_OUT_AUSTEN.contains(&work.title.as_str()),
    }
}

/// Read a whole gzip text file.
fn read_gz(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| format_error(path, format!("not a readable gzip file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| format_error(path, format!("not UTF-8 text: {e}")))
}

/// Every work of both authors from `text_dir` (see the [module documentation](self)):
/// Shakespeare's works in file order, then Austen's novels in [`AUSTEN_FILES`] order. A missing
/// or unreadable file is an error naming it.
pub fn load_works(text_dir: &Path) -> Result<Vec<Work>> {
    let shakespeare_path = text_dir.join(SHAKESPEARE_FILE);
    let mut files = vec![(shakespeare_path.clone(), None)];
    files.extend(
        AUSTEN_FILES
            .iter()
            .map(|(f, title)| (text_dir.join(f), Some(*title))),
    );
    // Decompress and clean the seven files in parallel.
    let per_file = files
        .par_iter()
        .map(|(path, title)| -> Result<Vec<Work>> {
            let text = read_gz(path)?;
            match title {
                None => {
                    let works = split_shakespeare(&text);
                    if works.is_empty() {
                        return Err(format_error(
                            path,
                            "no work found (a title line followed by \"by William Shakespeare\")",
                        ));
                    }
                    Ok(works)
                }
                Some(title) => Ok(vec![austen_work(title, &text)]),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(per_file.into_iter().flatten().collect())
}

/// The text between Project Gutenberg's `*** START OF` and `*** END OF` marker lines (the whole
/// text without them), without lines that name Project Gutenberg and without `<<...>>` blocks
/// (the licence notice of older Gutenberg Shakespeare files).
pub fn strip_gutenberg(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("*** START OF"))
        .map_or(0, |i| i + 1);
    let end = lines[start..]
        .iter()
        .position(|l| l.trim_start().starts_with("*** END OF"))
        .map_or(lines.len(), |i| start + i);
    let mut out = String::with_capacity(text.len());
    let mut in_notice = false;
    for line in &lines[start..end] {
        let t = line.trim();
        if t.starts_with("<<") {
            in_notice = true;
        }
        let drop = in_notice || t.to_ascii_lowercase().contains("project gutenberg");
        if in_notice && t.ends_with(">>") {
            in_notice = false;
        }
        if !drop {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Cut the Shakespeare collection into its works: each starts at a title line followed (after
/// blank lines) by `by William Shakespeare` and runs to the next title. Each work is cleaned and
/// split into sentences.
pub fn split_shakespeare(text: &str) -> Vec<Work> {
    let text = strip_gutenberg(text);
    let lines: Vec<&str> = text.lines().collect();
    // (title line index, first body line index)
    let mut starts = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "by William Shakespeare" {
            if let Some(t) = (0..i).rev().find(|&j| !lines[j].trim().is_empty()) {
                starts.push((t, i + 1));
            }
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, &(title, body))| {
            let end = starts.get(k + 1).map_or(lines.len(), |s| s.0);
            Work {
                title: lines[title].split_whitespace().collect::<Vec<_>>().join(" "),
                author: Author::Shakespeare,
                sentences: clean_play(&lines[body..end.max(body)]),
            }
        })
        .collect()
}

/// One Austen novel: everything before the first chapter heading and from `A NOTE ON THE
/// TEXT` on is dropped, then the text is cleaned (bracketed editorial notes such as
/// `[End volume one of this edition.]` go too) and split into sentences.
pub fn austen_work(title: &str, text: &str) -> Work {
    let text = strip_gutenberg(text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| is_chapter_heading(l)).unwrap_or(0);
    let end = lines
        .iter()
        .position(|l| l.trim().eq_ignore_ascii_case("a note on the text"))
        .unwrap_or(lines.len())
        .max(start);
    let mut sentences = Vec::new();
    for para in paragraphs(&lines[start..end]) {
        let kept: Vec<&str> = para
            .into_iter()
            .filter(|l| !is_chapter_heading(l) && !is_dropped_line(l))
            .collect();
        sentences.extend(split_sentences(&remove_stage_directions(&paragraph_text(&kept))));
    }
    Work {
        title: title.to_string(),
        author: Author::Austen,
        sentences,
    }
}

/// Non-blank lines grouped by blank lines.
fn paragraphs<'a>(lines: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for &l in lines {
        if l.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(l);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `Chapter 1`, `CHAPTER XII`, `CHAPTER 3.` (a chapter heading line).
fn is_chapter_heading(line: &str) -> bool {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(w), Some(n), None) => w.eq_ignore_ascii_case("chapter") && is_numeral(n.trim_end_matches('.')),
        _ => false,
    }
}

/// Arabic or Roman numerals.
fn is_numeral(s: &str) -> bool {
    !s.is_empty()
        && (s.chars().all(|c| c.is_ascii_digit()) || s.chars().all(|c| "IVXLCDMivxlcdm".contains(c)))
}

/// Lines dropped from every work: no lowercase letter (upper-case speaker names, headings,
/// numerals; lines without letters stay out too), or an end mark (`Finis`, `The End`).
fn is_dropped_line(line: &str) -> bool {
    let t = line.trim();
    !t.chars().any(char::is_lowercase) || t.eq_ignore_ascii_case("finis") || t.eq_ignore_ascii_case("the end")
}

/// The first line of a heading paragraph: `ACT II.`, `SCENE 3. A room.`, `Scene I.`,
/// `SCENE: England.`, `SCENE.--Verona.` or `The SCENE lies ...`.
fn is_act_or_scene_heading(line: &str) -> bool {
    let t = line.trim_start();
    let (the, t) = match t.strip_prefix("The ") {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let word: String = t.chars().take_while(|c| c.is_alphabetic()).collect();
    let rest = &t[word.len()..];
    let numeral_next = rest
        .split_whitespace()
        .next()
        .is_some_and(|n| is_numeral(n.trim_end_matches(['.', ':'])));
    if word.eq_ignore_ascii_case("act") {
        !the && numeral_next
    } else if word.eq_ignore_ascii_case("scene") {
        the || numeral_next || rest.is_empty() || rest.starts_with(['.', ':', '-'])
    } else {
        false
    }
}

/// The start of a play's cast list.
fn is_cast_heading(line: &str) -> bool {
    let t = line.trim().trim_end_matches('.').to_ascii_lowercase();
    t == "persons represented" || t == "dramatis personae"
}

/// Small words a speaker name may hold in lower case (`Duke of York.`).
const NAME_PARTICLES: [&str; 8] = ["of", "the", "and", "de", "la", "le", "du", "to"];

/// A speaker line: at most four words, ending in a period, every word capitalised (or a digit,
/// or a particle such as `of`), no other punctuation than periods and apostrophes.
fn is_speaker_line(line: &str) -> bool {
    let t = line.trim();
    if !t.ends_with('.') || t.chars().any(|c| ",;:!?()[]\"".contains(c)) {
        return false;
    }
    let words: Vec<&str> = t.split_whitespace().collect();
    !words.is_empty()
        && words.len() <= 4
        && words.iter().all(|w| {
            let first = w.chars().next().unwrap_or(' ');
            first.is_uppercase()
                || first.is_ascii_digit()
                || NAME_PARTICLES.contains(&w.trim_end_matches('.'))
        })
        && words[0]
            .chars()
            .next()
            .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit())
}

/// Clean a play or poem's body lines into sentences (cast list, headings, speaker lines, stage
/// directions out; see the [module documentation](self)).
fn clean_play(lines: &[&str]) -> Vec<String> {
    let paras = paragraphs(lines);
    let mut sentences = Vec::new();
    let mut i = 0;
    while i < paras.len() {
        let para = &paras[i];
        if is_cast_heading(para[0]) {
            // Skip to the paragraph naming the scene (dropped too), or stop before an act,
            // induction or prologue heading.
            let mut j = i + 1;
            while j < paras.len() {
                let first = paras[j][0].trim();
                if is_act_or_scene_heading(first) {
                    if first.to_ascii_lowercase().starts_with("act") {
                        j -= 1;
                    }
                    break;
                }
                let upper = first.to_ascii_uppercase();
                if upper.starts_with("INDUCTION")
                    || upper.starts_with("PROLOGUE")
                    || upper.starts_with("THE PROLOGUE")
                {
                    j -= 1;
                    break;
                }
                j += 1;
            }
            i = j + 1;
            continue;
        }
        i += 1;
        if is_act_or_scene_heading(para[0]) {
            continue;
        }
        let mut kept: Vec<&str> = Vec::with_capacity(para.len());
        for (k, line) in para.iter().enumerate() {
            if is_dropped_line(line) || (k == 0 && para.len() > 1 && is_speaker_line(line)) {
                continue;
            }
            kept.push(line);
        }
        let text = remove_stage_directions(&paragraph_text(&kept));
        sentences.extend(split_sentences(&text));
    }
    sentences
}

/// The lines of a paragraph joined by spaces, underscores removed, whitespace collapsed.
fn paragraph_text(lines: &[&str]) -> String {
    let mut out = String::new();
    for line in lines {
        for word in line.split_whitespace() {
            let word = word.replace('_', "");
            if word.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&word);
        }
    }
    out
}

/// `text` without `[...]` spans (typos included: `{...]`, `[...}`; closed by the end of the
/// paragraph when unclosed, and a `]` without its `[` drops what precedes it), whitespace
/// collapsed again.
fn remove_stage_directions(text: &str) -> String {
    if !text.contains(['[', ']', '{']) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for c in text.chars() {
        match (inside, c) {
            (false, '[' | '{') => inside = true,
            (true, ']' | '}') => inside = false,
            // A direction whose `[` is missing: it opened the paragraph.
            (false, ']') => out.clear(),
            (false, _) => out.push(c),
            (true, _) => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Words after whose period a sentence does not end (case-sensitive).
const ABBREVIATIONS: [&str; 18] = [
    "Mr", "Mrs", "Ms", "Dr", "St", "Messrs", "Mme", "Mlle", "Jr", "Sr", "Col", "Capt", "Gen", "Lt", "Rev",
    "Hon", "Prof", "Sgt",
];

/// Whether the word ending `before` (the text up to a period) is an abbreviation: one of
/// [`ABBREVIATIONS`] or a single capital initial other than `I` and `O`.
fn ends_with_abbreviation(before: &str) -> bool {
    // The trailing run of letters (`--Mr` gives `Mr`).
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphabetic())
        .last()
        .map_or(before.len(), |(i, _)| i);
    let word = &before[start..];
    if ABBREVIATIONS.contains(&word) {
        return true;
    }
    let mut chars = word.chars();
    matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase() && c != 'I' && c != 'O')
}

/// Characters that may close a sentence after its end mark.
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '\u{2019}' | '\u{201d}')
}

/// Characters that may open a sentence before its first letter.
fn is_opener(c: char) -> bool {
    matches!(c, '"' | '\'' | '(' | '[' | '\u{2018}' | '\u{201c}')
}

/// Split text (whitespace already collapsed) into sentences: a sentence ends at `.`, `!` or `?`
/// (with any further end marks and closing quotes or brackets) followed by whitespace, optional
/// opening quotes and an upper-case letter; never after an abbreviation (`Mr.`, `Mrs.`, `Dr.`,
/// `St.`, ... or a single capital initial other than `I` and `O`). Sentences are trimmed, and
/// those of at most one character or without a letter or digit are dropped.
pub fn split_sentences(text: &str) -> Vec<String> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
    let mut out = Vec::new();
    let mut push = |s: &str| {
        let s = s.trim();
        if s.chars().count() > 1 && s.chars().any(char::is_alphanumeric) {
            out.push(s.to_string());
        }
    };
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        if !matches!(c, '.' | '!' | '?') {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < chars.len() && (matches!(chars[j].1, '.' | '!' | '?') || is_closer(chars[j].1)) {
            j += 1;
        }
        let mut k = j;
        while k < chars.len() && chars[k].1.is_whitespace() {
            k += 1;
        }
        let mut m = k;
        while m < chars.len() && is_opener(chars[m].1) {
            m += 1;
        }
        let ends = k > j
            && m < chars.len()
            && chars[m].1.is_uppercase()
            && !(c == '.' && j == i + 1 && ends_with_abbreviation(&text[start..byte(i)]));
        if ends {
            push(&text[start..byte(j)]);
            start = byte(k);
        }
        i = j;
    }
    push(&text[start..]);
    out
}

/// Consecutive passages of 2 or 3 sentences (the count drawn from `rng` for each passage)
/// covering `0..num_sentences` in order; a last single sentence is left out.
pub fn passages(num_sentences: usize, rng: &mut TensorRng) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 <= num_sentences {
        let k = 2 + rng.next_below(2) as usize;
        let end = (i + k).min(num_sentences);
        out.push(i..end);
        i = end;
    }
    out
}

/// Every sentence of every work encoded with `tokenizer` (no special tokens), in parallel; the
/// result has one list of sentences per work, in order.
pub fn tokenize_works(works: &[Work], tokenizer: &Tokenizer) -> Result<Vec<Vec<Vec<u32>>>> {
    works
        .iter()
        .map(|w| {
            w.sentences
                .par_iter()
                .map(|s| tokenizer.encode(s, false))
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// The ids of BERT's special tokens that the datasets need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    /// `[CLS]`.
    pub cls: u32,
    /// `[SEP]`.
    pub sep: u32,
    /// `[PAD]`.
    pub pad: u32,
}

impl SpecialIds {
    /// The ids of `[CLS]`, `[SEP]` and `[PAD]` in `tokenizer`; an error names a missing one.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<SpecialIds> {
        let id = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                invalid(
                    "SpecialIds::from_tokenizer",
                    format!("{} has no {t} token", tokenizer.source().display()),
                )
            })
        };
        Ok(SpecialIds {
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: id("[PAD]")?,
        })
    }
}

/// Lay out rows as BERT inputs `u32 [N, 3, L]`: row 0 the ids padded with `pad`, row 1 the
/// token type ids (0 where absent and on padding), row 2 the attention mask (1 on tokens).
/// Every row must already fit `seq_len`.
fn bert_inputs<'a>(
    rows: impl ExactSizeIterator<Item = (&'a [u32], Option<&'a [u32]>)>,
    seq_len: usize,
    pad: u32,
) -> Result<Tensor> {
    let n = rows.len();
    let mut data = vec![0u32; n * 3 * seq_len];
    for (r, (ids, types)) in rows.enumerate() {
        if ids.len() > seq_len {
            return Err(invalid(
                "bert_inputs",
                format!("row {r} has {} tokens, more than {seq_len}", ids.len()),
            ));
        }
        let base = r * 3 * seq_len;
        let (id_row, rest) = data[base..base + 3 * seq_len].split_at_mut(seq_len);
        let (type_row, mask_row) = rest.split_at_mut(seq_len);
        id_row[..ids.len()].copy_from_slice(ids);
        id_row[ids.len()..].fill(pad);
        if let Some(t) = types {
            type_row[..t.len()].copy_from_slice(t);
        }
        mask_row[..ids.len()].fill(1);
    }
    Ok(Tensor::from_vec(data, [n, 3, seq_len])?)
}

/// BERT pre-training data from two authors' works (see [`mlm_nsp_dataset`]).
#[derive(Clone, Debug)]
pub struct MlmNspData {
    /// Pairs from the training works: inputs `u32 [N, 3, L]`, targets `i64 [N, L + 1]` (the `L`
    /// masked-LM labels, -100 where nothing is predicted, then the next-sentence label: 0 when
    /// the second sentence follows the first, 1 when it is random).
    pub train: TensorDataset,
    /// Pairs from the held-out works, in the same layout.
    pub validation: TensorDataset,
    /// The most frequent masked-LM label of the training pairs.
    pub unigram_token: u32,
    /// The share of held-out masked-LM labels equal to [`MlmNspData::unigram_token`]: the
    /// accuracy of always predicting it.
    pub unigram_accuracy: f64,
    /// Masked-LM labels (predicted positions) in the training and validation pairs.
    pub masked_tokens: (usize, usize),
}

/// Masked pairs of one split as tensors, and the count of each label id (`counts[id]`).
fn mlm_split(
    docs: &[Vec<Vec<u32>>],
    ids: SpecialIds,
    mlm: &MlmConfig,
    seq_len: usize,
    seed: u64,
) -> Result<(TensorDataset, Vec<usize>)> {
    let pairs = nsp_pairs(docs, ids.cls, ids.sep, Some(seq_len), seed)?;
    // One generator for the split's masks, example after example (static masking).
    let mut rng = TensorRng::new(seed ^ 0x6d6c_6d5f_6d61_736b);
    let mut masked = Vec::with_capacity(pairs.len());
    let mut targets = vec![IGNORE_INDEX; pairs.len() * (seq_len + 1)];
    let mut counts = vec![0usize; mlm.vocab_size];
    for (r, pair) in pairs.iter().enumerate() {
        let ex = mlm.mask(&pair.input_ids, &mut rng)?;
        let row = &mut targets[r * (seq_len + 1)..(r + 1) * (seq_len + 1)];
        row[..ex.labels.len()].copy_from_slice(&ex.labels);
        row[seq_len] = pair.label();
        for &l in ex.labels.iter().filter(|&&l| l != IGNORE_INDEX) {
            let slot = counts.get_mut(l as usize).ok_or_else(|| {
                invalid(
                    "mlm_nsp_dataset",
                    format!("token id {l} is not below the vocabulary size {}", mlm.vocab_size),
                )
            })?;
            *slot += 1;
        }
        masked.push(ex.input_ids);
    }
    let inputs = bert_inputs(
        masked
            .iter()
            .zip(&pairs)
            .map(|(m, p)| (m.as_slice(), Some(p.token_type_ids.as_slice()))),
        seq_len,
        ids.pad,
    )?;
    let targets = Tensor::from_vec(targets, [pairs.len(), seq_len + 1])?;
    Ok((TensorDataset::new(inputs, targets)?, counts))
}

/// BERT pre-training examples: every work is a document of tokenized sentences
/// (`tokenized[i]` for `works[i]`, as [`tokenize_works`] gives); training pairs come from the
/// works that are not [held out](is_held_out), validation pairs from the held-out ones. Pairs
/// are [`nsp_pairs`] (`[CLS] a [SEP] b [SEP]`, cut to `seq_len`), masked once by `mlm`
/// (static masking; 15% of the non-special tokens, 80/10/10), each split from its own seeded
/// generator (`seed` for training, `seed + 1` for validation).
pub fn mlm_nsp_dataset(
    works: &[Work],
    tokenized: &[Vec<Vec<u32>>],
    ids: SpecialIds,
    mlm: &MlmConfig,
    seq_len: usize,
    seed: u64,
) -> Result<MlmNspData> {
    if works.len() != tokenized.len() {
        return Err(invalid(
            "mlm_nsp_dataset",
            format!("{} works but {} tokenized works", works.len(), tokenized.len()),
        ));
    }
    let split = |held: bool| -> Vec<Vec<Vec<u32>>> {
        works
            .iter()
            .zip(tokenized)
            .filter(|(w, _)| is_held_out(w) == held)
            .map(|(_, t)| t.clone())
            .collect()
    };
    let (train, train_counts) = mlm_split(&split(false), ids, mlm, seq_len, seed)?;
    let (validation, val_counts) = mlm_split(&split(true), ids, mlm, seq_len, seed.wrapping_add(1))?;
    let unigram_token = train_counts
        .iter()
        .enumerate()
        .max_by_key(|&(id, &c)| (c, std::cmp::Reverse(id)))
        .map_or(0, |(id, _)| id as u32);
    let val_total: usize = val_counts.iter().sum();
    let unigram_accuracy = if val_total == 0 {
        0.0
    } else {
        val_counts[unigram_token as usize] as f64 / val_total as f64
    };
    Ok(MlmNspData {
        train,
        validation,
        unigram_token,
        unigram_accuracy,
        masked_tokens: (train_counts.iter().sum(), val_total),
    })
}

/// The author-classification data (see [`authors_dataset`]).
#[derive(Clone, Debug)]
pub struct AuthorsData {
    /// Training passages: inputs `u32 [N, 3, L]` (`[CLS] passage [SEP]`, type ids 0), targets
    /// `i64 [N]` ([`Author::label`]).
    pub train: TensorDataset,
    /// Test passages from the held-out works, in the same layout.
    pub test: TensorDataset,
    /// Passages cut to fit `L` (training, test).
    pub truncated: (usize, usize),
    /// Passages available before balancing and sub-sampling, per author (Shakespeare, Austen),
    /// for training and for test.
    pub available: ([usize; 2], [usize; 2]),
}

/// One split of the author data: `per_class` passages of each author drawn without replacement
/// (fewer if an author has fewer, the same number for both), shuffled.
fn authors_split(
    works: &[&Work],
    tokenized: &[&Vec<Vec<u32>>],
    ids: SpecialIds,
    seq_len: usize,
    per_class: usize,
    rng: &mut TensorRng,
) -> Result<(TensorDataset, usize, [usize; 2])> {
    // Every passage of every work: (author, token ids without special tokens).
    let mut by_author: [Vec<Vec<u32>>; 2] = [Vec::new(), Vec::new()];
    for (w, sentences) in works.iter().zip(tokenized) {
        for range in passages(sentences.len(), rng) {
            by_author[w.author.label() as usize].push(sentences[range].concat());
        }
    }
    let available = [by_author[0].len(), by_author[1].len()];
    let take = per_class.min(available[0]).min(available[1]);
    let mut chosen: Vec<(Vec<u32>, i64)> = Vec::with_capacity(2 * take);
    for (label, list) in by_author.iter_mut().enumerate() {
        let mut order: Vec<usize> = (0..list.len()).collect();
        rng.shuffle(&mut order);
        order.truncate(take);
        order.sort_unstable();
        chosen.extend(
            order
                .into_iter()
                .map(|i| (std::mem::take(&mut list[i]), label as i64)),
        );
    }
    rng.shuffle(&mut chosen);
    let mut truncated = 0;
    let rows: Vec<Vec<u32>> = chosen
        .iter()
        .map(|(p, _)| {
            let keep = p.len().min(seq_len.saturating_sub(2));
            truncated += usize::from(keep < p.len());
            let mut row = Vec::with_capacity(keep + 2);
            row.push(ids.cls);
            row.extend_from_slice(&p[..keep]);
            row.push(ids.sep);
            row
        })
        .collect();
    let inputs = bert_inputs(rows.iter().map(|r| (r.as_slice(), None)), seq_len, ids.pad)?;
    let labels: Vec<i64> = chosen.iter().map(|c| c.1).collect();
    let targets = Tensor::from_vec(labels, [chosen.len()])?;
    Ok((TensorDataset::new(inputs, targets)?, truncated, available))
}

/// Author classification: passages of 2–3 consecutive sentences ([`passages`]) as
/// `[CLS] passage [SEP]`, cut to `seq_len`, labelled by author; training passages from the
/// works that are not [held out](is_held_out), test passages from the held-out ones. Each split
/// is balanced: `train_per_class` (`test_per_class`) passages of each author drawn without
/// replacement, then shuffled. All draws come from one generator seeded with `seed`.
pub fn authors_dataset(
    works: &[Work],
    tokenized: &[Vec<Vec<u32>>],
    ids: SpecialIds,
    seq_len: usize,
    train_per_class: usize,
    test_per_class: usize,
    seed: u64,
) -> Result<AuthorsData> {
    const OP: &str = "authors_dataset";
    if works.len() != tokenized.len() {
        return Err(invalid(
            OP,
            format!("{} works but {} tokenized works", works.len(), tokenized.len()),
        ));
    }
    if seq_len < 3 {
        return Err(invalid(
            OP,
            format!("seq_len {seq_len} leaves no room for a token between [CLS] and [SEP]"),
        ));
    }
    let mut rng = TensorRng::new(seed);
    let split = |held: bool| -> (Vec<&Work>, Vec<&Vec<Vec<u32>>>) {
        works
            .iter()
            .zip(tokenized)
            .filter(|(w, _)| is_held_out(w) == held)
            .unzip()
    };
    let (tw, tt) = split(false);
    let (train, train_cut, train_avail) = authors_split(&tw, &tt, ids, seq_len, train_per_class, &mut rng)?;
    let (hw, ht) = split(true);
    let (test, test_cut, test_avail) = authors_split(&hw, &ht, ids, seq_len, test_per_class, &mut rng)?;
    Ok(AuthorsData {
        train,
        test,
        truncated: (train_cut, test_cut),
        available: (train_avail, test_avail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_end_at_marks_before_capitals_but_not_after_abbreviations() {
        let s = split_sentences(
            "Mr. Darcy bowed. \"Is it so?\" said she. Yes! and no. Mrs. Bennet met St. John and \
             Dr. Jones. Not I. Go. M. Antony came. What? A",
        );
        assert_eq!(
            s,
            vec![
                "Mr. Darcy bowed.",
                "\"Is it so?\" said she.",
                "Yes! and no.",
                "Mrs. Bennet met St. John and Dr. Jones.",
                "Not I.",
                "Go.",
                "M. Antony came.",
                "What?",
            ]
        );
        // Empty, one-character and letterless pieces are dropped.
        assert!(split_sentences("").is_empty());
        assert!(split_sentences("  . ").is_empty());
        assert!(split_sentences("?").is_empty() && split_sentences("x").is_empty());
        assert_eq!(split_sentences("O! Ah me! Ay."), vec!["O!", "Ah me!", "Ay."]);
        assert_eq!(split_sentences("!? Ay."), vec!["Ay."]);
        assert_eq!(
            split_sentences("cheerful--Mr. Weston came."),
            vec!["cheerful--Mr. Weston came."]
        );
    }

    const COLLECTION: &str = "THE FIRST PLAY\n\nby William Shakespeare\n\n\n\
PERSONS REPRESENTED.\n\nKING.\nA Lord, his friend.\n\nSCENE: A garden.\n\n\n\
ACT I.\n\nSCENE 1. A garden.\n\n[Enter KING and Lord.]\n\n\
KING.\nGood morrow, friend. How fares\nthe day?\n\n\
First Lord.\nWell, my liege. [Aside.] Too well.\n\nEnter two Sailors.]\n\n{Exeunt.]\n\nTHE END\n\n\
THE SONNETS\nby William Shakespeare\n\n\nI\n\nFrom fairest creatures we desire increase,\n\
That thereby beauty's rose might never die.\n";

    #[test]
    fn the_collection_splits_into_works_without_cast_headings_speakers_or_directions() {
        let works = split_shakespeare(COLLECTION);
        assert_eq!(works.len(), 2);
        assert_eq!(works[0].title, "THE FIRST PLAY");
        assert_eq!(
            works[0].sentences,
            vec![
                "Good morrow, friend.",
                "How fares the day?",
                "Well, my liege.",
                "Too well."
            ]
        );
        assert_eq!(works[1].title, "THE SONNETS");
        assert_eq!(
            works[1].sentences,
            vec!["From fairest creatures we desire increase, That thereby beauty's rose might never die."]
        );
        assert!(works.iter().all(|w| w.author == Author::Shakespeare));
    }

    #[test]
    fn novels_lose_front_matter_headings_and_the_editors_note() {
        let text =
            "EMMA\n\nBy Jane Austen\n\nVOLUME I\n\nCHAPTER I\n\n\nEmma was _very_ clever.\nShe smiled.\n\n\
Chapter 2\n\nMr. Knightley came.\n\nFINIS\n\nA NOTE ON THE TEXT\n\nThis edition follows.\n";
        let w = austen_work("Emma", text);
        assert_eq!(
            w.sentences,
            vec!["Emma was very clever.", "She smiled.", "Mr. Knightley came."]
        );
        assert_eq!(w.author.label(), 1);
    }

    #[test]
    fn gutenberg_markers_and_notices_are_removed() {
        let text = "Header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nKeep this.\n<<THIS ELECTRONIC\nVERSION IS COPYRIGHT>>\n\
Project Gutenberg is a trademark.\nAnd this.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nLicence.\n";
        assert_eq!(strip_gutenberg(text), "Keep this.\nAnd this.\n");
    }

    #[test]
    fn the_split_is_fixed_by_title() {
        let w = |title: &str, author| Work {
            title: title.into(),
            author,
            sentences: vec![],
        };
        assert!(is_held_out(&w("MACBETH", Author::Shakespeare)));
        assert!(!is_held_out(&w("HAMLET, PRINCE OF DENMARK", Author::Shakespeare)));
        assert!(is_held_out(&w("Persuasion", Author::Austen)));
        assert!(!is_held_out(&w("Emma", Author::Austen)));
        // A title held out for one author says nothing about the other.
        assert!(!is_held_out(&w("Persuasion", Author::Shakespeare)));
    }

    #[test]
    fn passages_cover_the_sentences_in_twos_and_threes_deterministically() {
        let a = passages(50, &mut TensorRng::new(3));
        assert_eq!(a, passages(50, &mut TensorRng::new(3)));
        assert!(a.iter().all(|r| (2..=3).contains(&r.len())));
        assert!(a.windows(2).all(|p| p[0].end == p[1].start));
        assert_eq!(a[0].start, 0);
        assert!(a.last().unwrap().end >= 49);
        assert!(passages(1, &mut TensorRng::new(3)).is_empty());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("kiln-books-missing-{}", std::process::id()));
        let e = load_works(&dir).unwrap_err().to_string();
        assert!(e.contains("janeausten") || e.contains(SHAKESPEARE_FILE), "{e}");
    }

    /// A toy document set: ids 1000.. as tokens, two authors.
    fn toy() -> (Vec<Work>, Vec<Vec<Vec<u32>>>) {
        let mut works = Vec::new();
        let mut tokens = Vec::new();
        for (title, author) in [
            ("A PLAY", Author::Shakespeare),
            ("MACBETH", Author::Shakespeare),
            ("Emma", Author::Austen),
            ("Persuasion", Author::Austen),
        ] {
            let base = 1000 * (works.len() as u32 + 1);
            let sentences: Vec<Vec<u32>> = (0..30u32)
                .map(|s| (0..(3 + s % 5)).map(|t| base + 10 * s + t).collect())
                .collect();
            works.push(Work {
                title: title.into(),
                author,
                sentences: sentences.iter().map(|s| format!("{s:?}")).collect(),
            });
            tokens.push(sentences);
        }
        (works, tokens)
    }

    const IDS: SpecialIds = SpecialIds {
        cls: 101,
        sep: 102,
        pad: 0,
    };

    #[test]
    fn mlm_pairs_have_the_fixed_layout_and_are_deterministic() {
        let (works, tokens) = toy();
        let mlm = MlmConfig::new(103, 5000, vec![0, 100, 101, 102, 103]);
        let a = mlm_nsp_dataset(&works, &tokens, IDS, &mlm, 16, 7).unwrap();
        let b = mlm_nsp_dataset(&works, &tokens, IDS, &mlm, 16, 7).unwrap();
        // 29 pairs per document, two documents per split.
        assert_eq!(a.train.len(), 58);
        assert_eq!(a.validation.len(), 58);
        assert_eq!(a.train.inputs().dims(), &[58, 3, 16]);
        assert_eq!(a.train.targets().unwrap().dims(), &[58, 17]);
        let x = a.train.inputs().to_vec::<u32>().unwrap();
        let y = a.train.targets().unwrap().to_vec::<i64>().unwrap();
        assert_eq!(x, b.train.inputs().to_vec::<u32>().unwrap());
        assert_eq!(y, b.train.targets().unwrap().to_vec::<i64>().unwrap());
        for r in 0..58 {
            let (ids, types, mask) = (
                &x[r * 48..r * 48 + 16],
                &x[r * 48 + 16..r * 48 + 32],
                &x[r * 48 + 32..r * 48 + 48],
            );
            let labels = &y[r * 17..r * 17 + 16];
            let n = mask.iter().filter(|&&m| m == 1).count();
            assert!(mask[..n].iter().all(|&m| m == 1) && mask[n..].iter().all(|&m| m == 0));
            assert_eq!(ids[0], 101);
            assert_eq!(ids[n - 1], 102);
            assert!(ids[n..].iter().all(|&i| i == 0) && types[n..].iter().all(|&t| t == 0));
            assert!(labels[n..].iter().all(|&l| l == IGNORE_INDEX));
            assert!(matches!(y[r * 17 + 16], 0 | 1));
        }
        assert!(y.iter().any(|&l| l >= 1000), "some tokens are masked");
        let c = mlm_nsp_dataset(&works, &tokens, IDS, &mlm, 16, 8).unwrap();
        assert_ne!(y, c.train.targets().unwrap().to_vec::<i64>().unwrap());
        assert!((0.0..=1.0).contains(&a.unigram_accuracy));
    }

    #[test]
    fn author_passages_are_balanced_labelled_and_cut_to_length() {
        let (works, tokens) = toy();
        let d = authors_dataset(&works, &tokens, IDS, 8, 5, 4, 1).unwrap();
        assert_eq!(d.train.len(), 10);
        assert_eq!(d.test.len(), 8);
        let y = d.train.targets().unwrap().to_vec::<i64>().unwrap();
        assert_eq!(y.iter().filter(|&&l| l == 1).count(), 5);
        let x = d.train.inputs().to_vec::<u32>().unwrap();
        for r in 0..10 {
            let ids = &x[r * 24..r * 24 + 8];
            assert_eq!(ids[0], 101);
            assert!(ids.contains(&102));
            assert!(x[r * 24 + 8..r * 24 + 16].iter().all(|&t| t == 0));
            // Training passages come from the works that are not held out (ids 1000.. and 3000..).
            assert!(
                (1000..1300).contains(&ids[1]) || (3000..3300).contains(&ids[1]),
                "{ids:?}"
            );
        }
        assert!(
            d.truncated.0 > 0,
            "passages of 6+ tokens do not fit 8 with [CLS] and [SEP]"
        );
        let again = authors_dataset(&works, &tokens, IDS, 8, 5, 4, 1).unwrap();
        assert_eq!(x, again.train.inputs().to_vec::<u32>().unwrap());
        assert!(d.available.0.iter().chain(&d.available.1).all(|&n| n >= 10));
    }

    /// The repository's own copies of the texts, when present.
    fn repo_text_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/text")
    }

    #[test]
    fn the_real_books_give_48_works_and_the_held_out_titles_exist() {
        let dir = repo_text_dir();
        if !dir.join(SHAKESPEARE_FILE).is_file() {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        }
        let works = load_works(&dir).unwrap();
        assert_eq!(works.len(), 48);
        let shakespeare: Vec<&Work> = works.iter().filter(|w| w.author == Author::Shakespeare).collect();
        assert_eq!(shakespeare.len(), 42);
        for (i, w) in shakespeare.iter().enumerate() {
            assert_eq!(is_held_out(w), i % 5 == 4, "{}", w.title);
        }
        for t in HELD_OUT_SHAKESPEARE {
            assert!(works.iter().any(|w| w.title == t), "{t}");
        }
        assert_eq!(works.iter().filter(|w| is_held_out(w)).count(), 10);
        for w in &works {
            assert!(
                w.sentences.len() >= 10,
                "{} has {} sentences",
                w.title,
                w.sentences.len()
            );
            for s in &w.sentences {
                assert!(
                    !s.contains('[') && !s.contains("William Shakespeare"),
                    "{}: {s}",
                    w.title
                );
            }
        }
    }
}
