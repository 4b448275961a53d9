//! The false-hit budget without a model: the labelled pairs of
//! tests/data/semantic_pairs.tsv through the default decision (cosine of the hashed
//! bag-of-words embeddings of the prompts as written at the default threshold, then the
//! default lexical guard). Prints precision and recall per class; fails on any served
//! must-refuse pair, and on any whitespace variant refused. The real model's figures come
//! from model.rs.

use std::collections::BTreeMap;

use crate::pairs::pairs;
use crate::support::bow::{bag_of_words, cosine};
use llm_cache::{DEFAULT_SEMANTIC_THRESHOLD, LexicalGuard};

const DIMS: usize = 512;
/// Classes whose every pair must be served by the default configuration.
const ALWAYS_SERVED: [&str; 1] = ["whitespace"];

#[derive(Default)]
struct Tally {
    pairs: usize,
    positives: usize,
    served: usize,
    served_right: usize,
    /// Must-refuse pairs whose cosine passed the threshold: the guard alone refused them.
    reached_guard: usize,
}

#[test]
fn default_configuration_serves_no_must_refuse_pair() {
    let guard = LexicalGuard::default();
    let pairs = pairs();
    assert!(pairs.len() >= 300, "{} pairs", pairs.len());
    let mut by_class: BTreeMap<String, Tally> = BTreeMap::new();
    let mut wrong = Vec::new();
    for p in &pairs {
        let (ca, cb) = (guard.canonical(&p.a), guard.canonical(&p.b));
        let cos = cosine(&bag_of_words(&p.a, DIMS), &bag_of_words(&p.b, DIMS));
        let above = cos >= DEFAULT_SEMANTIC_THRESHOLD;
        let verdict = guard.compare(&ca, &cb);
        let served = above && verdict.passes();
        let t = by_class.entry(p.class.clone()).or_default();
        t.pairs += 1;
        t.positives += usize::from(p.serve);
        t.served += usize::from(served);
        t.served_right += usize::from(served && p.serve);
        t.reached_guard += usize::from(above && !p.serve);
        if served != p.serve {
            wrong.push(format!(
                "{:>14} {} cos {cos:.2} {verdict:?}: {:?} [{}] / {:?} [{}]",
                p.class,
                if p.serve { "refused" } else { "SERVED " },
                p.a,
                ca.text(),
                p.b,
                cb.text()
            ));
        }
    }
    println!(
        "threshold {DEFAULT_SEMANTIC_THRESHOLD}, hashed bag of words ({DIMS} dims), default guard"
    );
    println!("| class | pairs | served | precision | recall | refused by the guard alone |");
    println!("|---|---|---|---|---|---|");
    let (mut tp, mut fp, mut pos) = (0, 0, 0);
    for (class, t) in &by_class {
        let precision = if t.served == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}%", 100.0 * t.served_right as f64 / t.served as f64)
        };
        let recall = if t.positives == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}%", 100.0 * t.served_right as f64 / t.positives as f64)
        };
        let guarded = if t.positives == 0 {
            format!("{}/{}", t.reached_guard, t.pairs)
        } else {
            "-".to_owned()
        };
        println!(
            "| {class} | {} | {} | {precision} | {recall} | {guarded} |",
            t.pairs, t.served
        );
        tp += t.served_right;
        fp += t.served - t.served_right;
        pos += t.positives;
    }
    println!(
        "| all | {} | {} | {:.1}% | {:.1}% | |",
        pairs.len(),
        tp + fp,
        100.0 * tp as f64 / (tp + fp).max(1) as f64,
        100.0 * tp as f64 / pos.max(1) as f64
    );
    for w in &wrong {
        println!("{w}");
    }
    let false_hits: Vec<&String> = wrong.iter().filter(|w| w.contains("SERVED")).collect();
    assert!(
        false_hits.is_empty(),
        "must-refuse pairs served: {false_hits:#?}"
    );
    for class in ALWAYS_SERVED {
        let t = &by_class[class];
        assert_eq!(t.served, t.pairs, "every {class} variant must be served");
    }
}
