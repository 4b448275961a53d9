//! The guard's rewrites of a token list, each a rule a reader can check: a sentence's first
//! capital, omitted articles, contractions, the fixed politeness frames, `not` after its
//! auxiliary, a leading clause moved to the end, the order of "X or Y". None may merge two
//! prompts that ask different things. Pure functions, no I/O.

use super::tokens::{Article, Kind, Word};
use super::words::{
    ABILITY_FRAMES, ABILITY_REQUESTS, CLOSING_ASIDES, CONTRACTIONS, INDIRECT_FRAMES, IS_BEFORE_S,
    MOVABLE_CLAUSE_STARTS, NEGATIONS, OPENING_ASIDES, ORDERED_PAIRS, REQUEST_FRAMES, REQUEST_VERBS,
    WH,
};

/// "What" -> "what" at a sentence's start; "MBps", "iPhone", "NASA" and "I" stay.
pub(super) fn fold_first_capital(text: &str) -> String {
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let rest = chars.as_str();
    let single_article = text == "A";
    if first.is_uppercase()
        && (single_article || (!rest.is_empty() && !rest.chars().any(char::is_uppercase)))
    {
        first.to_lowercase().chain(rest.chars()).collect()
    } else {
        text.to_owned()
    }
}

/// Drop `a`, `an`, `the` before a word or number, marking the word: "what is capital of
/// France" is "what is the capital of France", "a number of" is not "the number of", and
/// "a few" / "a little" stay themselves (not "few" / "little").
pub(super) fn drop_articles(words: &mut Vec<Word>) {
    let mut k = 0;
    while k + 1 < words.len() {
        let article = match words[k].text.as_str() {
            "a" | "an" if words[k].kind == Kind::Plain => Article::Indefinite,
            "the" if words[k].kind == Kind::Plain => Article::Definite,
            _ => {
                k += 1;
                continue;
            }
        };
        let next = &words[k + 1];
        if next.kind == Kind::Symbol || next.starts {
            k += 1;
            continue;
        }
        if article == Article::Indefinite && next.is_one_of(&["few", "little", "lot", "bit"]) {
            let next = words.remove(k + 1);
            words[k].text = format!("a {}", next.text);
            words[k].fuzzy = false;
            k += 1;
            continue;
        }
        let starts = words[k].starts;
        words.remove(k);
        words[k].article = Some(article);
        words[k].starts |= starts;
    }
}

fn starts_with(words: &[Word], phrase: &[&str]) -> bool {
    words.len() > phrase.len() && words.iter().zip(phrase).all(|(w, p)| w.is(p))
}

fn ends_with(words: &[Word], phrase: &[&str]) -> bool {
    words.len() > phrase.len()
        && words[words.len() - phrase.len()..]
            .iter()
            .zip(phrase)
            .all(|(w, p)| w.is(p))
}

const COPULAS: &[&str] = &["is", "are", "was", "were"];

/// Drop the fixed politeness frames: never a word the frame does not fence off.
pub(super) fn strip_politeness(words: &mut Vec<Word>) {
    let mut indirect = false;
    'lead: loop {
        for phrase in OPENING_ASIDES {
            if starts_with(words, phrase) {
                let after = &words[phrase.len()];
                if after.is_pause() && words.len() > phrase.len() + 1 {
                    words.drain(..=phrase.len());
                } else if after.starts {
                    words.drain(..phrase.len());
                } else {
                    continue;
                }
                words[0].starts = true;
                continue 'lead;
            }
        }
        for phrase in REQUEST_FRAMES {
            if starts_with(words, phrase) && words[phrase.len()].is_one_of(REQUEST_VERBS) {
                words.drain(..phrase.len());
                words[0].starts = true;
                continue 'lead;
            }
        }
        for phrase in ABILITY_FRAMES {
            let request = |r: &&[&str]| {
                words.len() > phrase.len() + r.len()
                    && words[phrase.len()..]
                        .iter()
                        .zip(r.iter())
                        .all(|(w, p)| w.is(p))
            };
            if starts_with(words, phrase) && ABILITY_REQUESTS.iter().any(request) {
                words.drain(..phrase.len());
                words[0].starts = true;
                continue 'lead;
            }
        }
        for phrase in INDIRECT_FRAMES {
            if !starts_with(words, phrase) {
                continue;
            }
            let pause = usize::from(words[phrase.len()].is_pause());
            if words
                .get(phrase.len() + pause)
                .is_some_and(|w| w.is_one_of(WH))
            {
                words.drain(..phrase.len() + pause);
                words[0].starts = true;
                indirect = true;
                continue 'lead;
            }
        }
        break;
    }
    'trail: loop {
        for phrase in CLOSING_ASIDES {
            if !ends_with(words, phrase) {
                continue;
            }
            let at = words.len() - phrase.len();
            if words[at].starts {
                words.truncate(at);
                continue 'trail;
            }
            if at >= 2 && words[at - 1].is_pause() {
                words.truncate(at - 1);
                continue 'trail;
            }
        }
        break;
    }
    // "tell me what the capital of France is" asks "what is the capital of France".
    let end = (1..words.len())
        .find(|&k| words[k].starts)
        .unwrap_or(words.len());
    if indirect && end >= 3 && words[0].is_one_of(WH) && words[end - 1].is_one_of(COPULAS) {
        let copula = words.remove(end - 1);
        words.insert(1, copula);
    }
}

const AUXILIARIES: &[&str] = &[
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "will", "would", "should",
    "has", "have", "had", "must", "may", "might", "shall",
];

/// "why is it not working" and "why isn't it working" ask the same: a question opening
/// with a question word and an auxiliary puts a `not` found within the next three words
/// right after the auxiliary, where the contraction puts it. Not in a yes/no question:
/// "can you not go?" asks whether you may skip it, "can't you go?" why you cannot.
pub(super) fn place_not_after_auxiliary(words: &mut Vec<Word>) {
    let aux = 1;
    if !words.first().is_some_and(|w| w.is_one_of(WH))
        || !words.get(aux).is_some_and(|w| w.is_one_of(AUXILIARIES))
    {
        return;
    }
    let window = aux + 2..(aux + 5).min(words.len());
    let Some(at) = window.clone().find(|&k| words[k].is("not")) else {
        return;
    };
    let between = &words[aux + 1..at];
    if between.iter().any(|w| {
        w.kind != Kind::Plain && w.kind != Kind::Ident
            || w.is("or")
            || w.is("not")
            || w.is_one_of(AUXILIARIES)
            || w.starts
    }) {
        return;
    }
    let not = words.remove(at);
    words.insert(aux + 1, not);
}

/// "In Python, how do I sort a list?" asks "How do I sort a list in Python?": in a prompt
/// of one sentence, a leading clause opened by one of [`MOVABLE_CLAUSE_STARTS`] and closed
/// by the first comma (two to six words, no symbol, no question word) moves to the end.
pub(super) fn move_leading_clause(words: &mut Vec<Word>) {
    if words.iter().skip(1).any(|w| w.starts)
        || !words
            .first()
            .is_some_and(|w| w.is_one_of(MOVABLE_CLAUSE_STARTS))
    {
        return;
    }
    let Some(comma) = words.iter().position(|w| w.kind == Kind::Symbol) else {
        return;
    };
    let clause_ok = (2..=6).contains(&comma)
        && words[comma].text == ","
        && words[1..comma]
            .iter()
            .all(|w| w.kind != Kind::Symbol && !w.is_one_of(WH));
    if !clause_ok || words.len() < comma + 3 {
        return;
    }
    let mut rest = words.split_off(comma);
    rest.remove(0);
    let clause = std::mem::replace(words, rest);
    words[0].starts = true;
    words.extend(clause.into_iter().map(|mut w| {
        w.starts = false;
        w
    }));
}

/// "X or Y" and "Y or X", "between X and Y" and "between Y and X": one order (the
/// alphabetical), where X and Y are single plain words and the order cannot matter (not
/// "more or less", not a chain "X or Y or Z"). "X versus Y" keeps its order: "compare X
/// versus Y" may ask for X's side first.
pub(super) fn order_alternatives(words: &mut [Word]) {
    let swappable =
        |w: &Word| w.kind == Kind::Plain && !w.is_one_of(ORDERED_PAIRS) && !w.is_one_of(NEGATIONS);
    let joins = |w: &Word| w.is_one_of(&["or", "and", "nor", "either", "whether"]);
    for k in 1..words.len().saturating_sub(1) {
        let (x, y) = if words[k].is("or") {
            (k - 1, k + 1)
        } else if words[k].is("between") && k + 3 < words.len() && words[k + 2].is("and") {
            (k + 1, k + 3)
        } else {
            continue;
        };
        let chained = (x >= 1 && joins(&words[x - 1])) || words.get(y + 1).is_some_and(joins);
        let guarded_between = words[k].is("between") && words.get(y + 1).is_some_and(joins);
        if chained && !words[k].is("between") || guarded_between {
            continue;
        }
        if swappable(&words[x])
            && swappable(&words[y])
            && !words[x].starts
            && !words[y].starts
            && words[x].text > words[y].text
        {
            words.swap(x, y);
        }
    }
}

/// Expand a contraction into its words ("don't" -> "do", "not"; "john's" -> "john", "'s").
pub(super) fn expand(word: &str) -> Vec<String> {
    if let Some((_, full)) = CONTRACTIONS.iter().find(|(c, _)| *c == word) {
        return full.split(' ').map(str::to_owned).collect();
    }
    let Some(at) = word.find('\'') else {
        return vec![word.to_owned()];
    };
    let (stem, tail) = word.split_at(at);
    if let Some(stem) = word.strip_suffix("n't") {
        return vec![stem.to_owned(), "not".to_owned()];
    }
    let second = match tail {
        "'re" => "are",
        "'ve" => "have",
        "'ll" => "will",
        "'m" => "am",
        "'s" if IS_BEFORE_S.contains(&stem) => "is",
        "'s" => "'s",
        // "'d" is "had" or "would": kept as written, like any other apostrophe.
        _ => return vec![word.to_owned()],
    };
    vec![stem.to_owned(), second.to_owned()]
}
