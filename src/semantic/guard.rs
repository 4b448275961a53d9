//! The lexical guard: the second opinion a semantic candidate needs after its cosine. Two
//! prompts pass only if their content words agree, in order, once case, punctuation,
//! whitespace, contractions, politeness phrases, articles, listed synonyms and listed
//! misspellings are set aside; negations, numbers, symbols and named identifiers must
//! match exactly, and at most `max_typos` other long words may differ by one letter. It
//! must never pass a pair because the two are "close": every allowance is a rule a reader
//! can check. Pure functions, no I/O.

use super::words::{
    CONTRACTIONS, FUNCTION_WORDS, IS_BEFORE_S, LEADING_POLITENESS, MISSPELLINGS, NEGATIONS,
    NUMBER_WORDS, OPENINGS, PROTECTED, PROTECTED_STEMS, SYNONYMS, TRAILING_POLITENESS,
};

/// The default `max_typos`: one long word may differ by one letter.
pub const DEFAULT_MAX_TYPOS: usize = 1;
/// The default `typo_min_len`: a word shorter than this is never forgiven a typo.
pub const DEFAULT_TYPO_MIN_LEN: usize = 6;

/// The lexical guard a semantic candidate must pass besides its cosine (see the README's
/// "Semantic cache" section for the rules). [`LexicalGuard::default`] is the measured
/// configuration; [`LexicalGuard::strict`] forgives nothing but case, punctuation,
/// whitespace, contractions, articles and politeness.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct LexicalGuard {
    max_typos: usize,
    typo_min_len: usize,
    synonyms: bool,
    politeness: bool,
    extra_function_words: Vec<String>,
    extra_protected: Vec<String>,
    extra_synonyms: Vec<(String, String)>,
}

impl Default for LexicalGuard {
    fn default() -> Self {
        LexicalGuard {
            max_typos: DEFAULT_MAX_TYPOS,
            typo_min_len: DEFAULT_TYPO_MIN_LEN,
            synonyms: true,
            politeness: true,
            extra_function_words: Vec::new(),
            extra_protected: Vec::new(),
            extra_synonyms: Vec::new(),
        }
    }
}

/// What the guard decided about two prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuardVerdict {
    /// The same question: serve.
    Same,
    /// The same question but for this many one-letter typos: serve.
    Typos(usize),
    /// Another question: refuse.
    Refused(Refusal),
}

impl GuardVerdict {
    /// Whether the candidate may be served.
    pub fn passes(self) -> bool {
        !matches!(self, GuardVerdict::Refused(_))
    }
}

/// Why the guard refused a pair (the first that applies, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The same words in another order.
    Order,
    /// A negation on one side only (or different negations).
    Negation,
    /// A number, symbol or identifier differs.
    Number,
    /// Other words differ.
    Words,
}

impl Refusal {
    /// A short lower-case name (`order`, `negation`, `number`, `words`).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Order => "order",
            Refusal::Negation => "negation",
            Refusal::Number => "number",
            Refusal::Words => "words",
        }
    }
}

/// A prompt as the guard compares it: canonical words, each marked when it may be forgiven
/// a typo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    text: String,
    /// May be forgiven a one-letter typo: a plain lower-case word, no digit, not a name.
    fuzzy: bool,
}

impl Canonical {
    /// The canonical words joined by single spaces: what the cache embeds, so that case,
    /// punctuation and politeness variants share one embedding.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, w) in self.words.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&w.text);
        }
        out
    }

    /// How many canonical words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether nothing with content is left (a prompt of only politeness or punctuation).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

impl LexicalGuard {
    /// The default guard (the measured configuration).
    pub fn new() -> Self {
        Self::default()
    }

    /// The tightest guard: no typos and no synonyms forgiven.
    pub fn strict() -> Self {
        Self::default().max_typos(0).synonyms(false)
    }

    /// How many one-letter typos (substitution, insertion, deletion or swap of neighbours)
    /// a pair may hold and pass; 0 forgives none. Default 1.
    pub fn max_typos(mut self, n: usize) -> Self {
        self.max_typos = n;
        self
    }

    /// The shortest word that may be forgiven a typo (both words of the pair must be at least
    /// this long, start with the same letter, and be plain lower-case words). Default 6.
    pub fn typo_min_len(mut self, len: usize) -> Self {
        self.typo_min_len = len.max(2);
        self
    }

    /// Whether the listed synonyms ("big" / "large", "start" / "begin", British and American
    /// spellings, unit spellings) and question openings ("how do I" / "how to") compare
    /// equal. Default true.
    pub fn synonyms(mut self, yes: bool) -> Self {
        self.synonyms = yes;
        self
    }

    /// Whether politeness phrases at the start or end ("could you please tell me",
    /// "thanks in advance") are set aside. Default true.
    pub fn politeness(mut self, yes: bool) -> Self {
        self.politeness = yes;
        self
    }

    /// More words to ignore wherever they stand (lower-case).
    pub fn function_words<I, S>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.extra_function_words
            .extend(words.into_iter().map(|w| w.as_ref().to_lowercase()));
        self
    }

    /// More words never forgiven a typo (lower-case): names of your domain that sit one
    /// letter apart.
    pub fn protect<I, S>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.extra_protected
            .extend(words.into_iter().map(|w| w.as_ref().to_lowercase()));
        self
    }

    /// One more synonym: `word` compares as `means` (both lower-case single words).
    pub fn synonym(mut self, word: &str, means: &str) -> Self {
        self.extra_synonyms
            .push((word.to_lowercase(), means.to_lowercase()));
        self
    }

    /// Decide whether two prompts ask the same question.
    pub fn check(&self, a: &str, b: &str) -> GuardVerdict {
        self.compare(&self.canonical(a), &self.canonical(b))
    }

    /// Decide on two canonical prompts.
    pub fn compare(&self, a: &Canonical, b: &Canonical) -> GuardVerdict {
        if a.words.is_empty() || b.words.is_empty() {
            // Nothing left to compare ("thanks!"): never a semantic match.
            return GuardVerdict::Refused(Refusal::Words);
        }
        if a.words.len() == b.words.len() {
            let mut typos = 0;
            let mut other = false;
            for (x, y) in a.words.iter().zip(&b.words) {
                if x.text == y.text {
                    continue;
                }
                if self.forgivable(x, y) {
                    typos += 1;
                } else {
                    other = true;
                    break;
                }
            }
            if !other && typos == 0 {
                return GuardVerdict::Same;
            }
            if !other && typos <= self.max_typos {
                return GuardVerdict::Typos(typos);
            }
        }
        GuardVerdict::Refused(refusal(a, b))
    }

    fn forgivable(&self, x: &Word, y: &Word) -> bool {
        let ok = |w: &Word| {
            w.fuzzy
                && w.text.len() >= self.typo_min_len
                && !PROTECTED.contains(&w.text.as_str())
                && !self.extra_protected.contains(&w.text)
                && !PROTECTED_STEMS.iter().any(|s| w.text.starts_with(s))
        };
        self.max_typos > 0
            && ok(x)
            && ok(y)
            && x.text.as_bytes()[0] == y.text.as_bytes()[0]
            && one_edit_apart(x.text.as_bytes(), y.text.as_bytes())
    }

    /// The prompt as the guard compares it.
    pub fn canonical(&self, text: &str) -> Canonical {
        let raw = lex(text);
        let caps = mostly_upper_case(text);
        let mut words: Vec<Word> = Vec::with_capacity(raw.len());
        for token in raw {
            match token.kind {
                Kind::Word => self.push_word(&token, caps, &mut words),
                _ => words.push(Word {
                    text: token.text,
                    fuzzy: false,
                }),
            }
        }
        // "a few" / "a little" are not "few" / "little": keep the article with them.
        for k in (0..words.len().saturating_sub(1)).rev() {
            if words[k].text == "a" && matches!(words[k + 1].text.as_str(), "few" | "little") {
                let next = words.remove(k + 1);
                words[k] = plain(&format!("a {}", next.text));
            }
        }
        words.retain(|w| {
            !FUNCTION_WORDS.contains(&w.text.as_str())
                && !self.extra_function_words.contains(&w.text)
        });
        if self.politeness {
            strip_politeness(&mut words);
        }
        place_not_after_auxiliary(&mut words);
        if self.synonyms {
            for (from, to) in OPENINGS {
                if starts_with(&words, from) {
                    let rest = words.split_off(from.len());
                    words = to.iter().map(|t| plain(t)).collect();
                    words.extend(rest);
                    break;
                }
            }
            for w in &mut words {
                if let Some((_, to)) = self.extra_synonyms.iter().find(|(f, _)| *f == w.text) {
                    w.text = to.clone();
                } else if let Some(group) = SYNONYMS.iter().find(|g| g.contains(&w.text.as_str())) {
                    w.text = group[0].to_owned();
                }
            }
        }
        Canonical { words }
    }

    /// One word token: lower-cased, misspelling fixed, contraction expanded, number word
    /// turned to digits.
    fn push_word(&self, token: &Raw, caps: bool, out: &mut Vec<Word>) {
        let lower = token.text.to_lowercase().replace('’', "'");
        // Only a word written all in lower case may be forgiven a typo: a capital marks a
        // name ("Boston" / "Bolton"), even at a sentence's start, and a prompt in capitals
        // says nothing either way.
        let fuzzy = !caps && token.text.chars().all(|c| c.is_ascii_lowercase());
        let lower = match MISSPELLINGS.iter().find(|(m, _)| *m == lower) {
            Some((_, fixed)) => (*fixed).to_owned(),
            None => lower,
        };
        for part in expand(&lower) {
            let text = match NUMBER_WORDS.iter().find(|(w, _)| *w == part) {
                Some((_, digits)) => (*digits).to_owned(),
                None => part,
            };
            let fuzzy = fuzzy && !text.contains(['\'']) && !text.as_bytes()[0].is_ascii_digit();
            out.push(Word { text, fuzzy });
        }
    }
}

fn plain(text: &str) -> Word {
    Word {
        text: text.to_owned(),
        fuzzy: false,
    }
}

fn starts_with(words: &[Word], phrase: &[&str]) -> bool {
    words.len() >= phrase.len() && words.iter().zip(phrase).all(|(w, p)| w.text == *p)
}

fn ends_with(words: &[Word], phrase: &[&str]) -> bool {
    words.len() >= phrase.len()
        && words[words.len() - phrase.len()..]
            .iter()
            .zip(phrase)
            .all(|(w, p)| w.text == *p)
}

/// Leading phrases that wrap an indirect question ("tell me what X is").
const INDIRECT: &[&str] = &["tell", "know", "wonder", "wondering", "ask"];
const WH: &[&str] = &["what", "who", "where", "when", "why", "how", "which"];
const COPULAS: &[&str] = &["is", "are", "was", "were"];

fn strip_politeness(words: &mut Vec<Word>) {
    let mut indirect = false;
    'lead: loop {
        for phrase in LEADING_POLITENESS {
            // Never strip the whole prompt: "can you" alone stays a question.
            if words.len() > phrase.len() && starts_with(words, phrase) {
                indirect |= phrase.iter().any(|w| INDIRECT.contains(w));
                words.drain(..phrase.len());
                continue 'lead;
            }
        }
        break;
    }
    'trail: loop {
        for phrase in TRAILING_POLITENESS {
            if words.len() > phrase.len() && ends_with(words, phrase) {
                words.truncate(words.len() - phrase.len());
                continue 'trail;
            }
        }
        break;
    }
    // "tell me what the capital of France is" asks "what is the capital of France".
    if indirect
        && words.len() >= 3
        && WH.contains(&words[0].text.as_str())
        && COPULAS.contains(&words[words.len() - 1].text.as_str())
    {
        let copula = words.pop().expect("at least three words");
        words.insert(1, copula);
    }
}

const AUXILIARIES: &[&str] = &[
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "will", "would", "should",
    "has", "have", "had", "must", "may", "might", "shall",
];

/// "why is it not working" and "why isn't it working" ask the same: a question opening
/// with an auxiliary (after an optional question word) puts a `not` found within the next
/// three words right after the auxiliary, where the contraction puts it.
fn place_not_after_auxiliary(words: &mut Vec<Word>) {
    let aux = usize::from(words.first().is_some_and(|w| WH.contains(&w.text.as_str())));
    if !words
        .get(aux)
        .is_some_and(|w| AUXILIARIES.contains(&w.text.as_str()))
    {
        return;
    }
    let window = aux + 2..(aux + 5).min(words.len());
    let Some(at) = window.clone().find(|&k| words[k].text == "not") else {
        return;
    };
    let between = &words[aux + 1..at];
    if between
        .iter()
        .any(|w| w.text == "or" || w.text == "not" || AUXILIARIES.contains(&w.text.as_str()))
        || words[aux + 1].text == "not"
    {
        return;
    }
    let not = words.remove(at);
    words.insert(aux + 1, not);
}

/// Expand a contraction into its words ("don't" -> "do", "not"; "john's" -> "john", "'s").
fn expand(word: &str) -> Vec<String> {
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
        "'d" => "would",
        "'m" => "am",
        "'s" if IS_BEFORE_S.contains(&stem) => "is",
        "'s" => "'s",
        // Another apostrophe ("o'clock", "rock'n'roll"): one word without it.
        _ => return vec![word.replace('\'', "")],
    };
    vec![stem.to_owned(), second.to_owned()]
}

/// Whether the refused pair differs by order, a negation, a number, or other words.
fn refusal(a: &Canonical, b: &Canonical) -> Refusal {
    let mut x: Vec<&str> = a.words.iter().map(|w| w.text.as_str()).collect();
    let mut y: Vec<&str> = b.words.iter().map(|w| w.text.as_str()).collect();
    x.sort_unstable();
    y.sort_unstable();
    if x == y {
        return Refusal::Order;
    }
    let only = |p: &[&str], q: &[&str]| -> Vec<String> {
        p.iter()
            .filter(|w| !q.contains(w))
            .map(|w| (*w).to_owned())
            .collect()
    };
    let mut diff = only(&x, &y);
    diff.extend(only(&y, &x));
    if diff.iter().any(|w| NEGATIONS.contains(&w.as_str())) {
        Refusal::Negation
    } else if diff
        .iter()
        .any(|w| !w.chars().all(|c| c.is_alphabetic() || c == '\''))
    {
        Refusal::Number
    } else {
        Refusal::Words
    }
}

/// Whether `a` and `b` are exactly one edit apart (substitution, insertion, deletion, or a
/// swap of two neighbours).
fn one_edit_apart(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return false;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let prefix = short.iter().zip(long).take_while(|(x, y)| x == y).count();
    match long.len() - short.len() {
        0 => {
            let same_tail = |from: usize| short[from..] == long[from..];
            same_tail(prefix + 1)
                || (prefix + 1 < short.len()
                    && short[prefix] == long[prefix + 1]
                    && short[prefix + 1] == long[prefix]
                    && same_tail(prefix + 2))
        }
        1 => short[prefix..] == long[prefix + 1..],
        _ => false,
    }
}

/// Whether most letters of `text` are capitals (a shouted prompt: capitals mark no names).
fn mostly_upper_case(text: &str) -> bool {
    let (mut upper, mut letters) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        upper += usize::from(c.is_uppercase());
    }
    letters > 0 && upper * 10 >= letters * 6
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Number,
    Symbol,
    Dash,
    Bracket,
}

#[derive(Debug)]
struct Raw {
    text: String,
    kind: Kind,
}

/// Punctuation that carries no content between words.
fn is_sentence_punct(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | '!'
            | '?'
            | ';'
            | ':'
            | '"'
            | '\''
            | '`'
            | '…'
            | '¿'
            | '¡'
            | '«'
            | '»'
            | '“'
            | '”'
            | '‘'
            | '’'
            | '—'
            | '–'
    )
}

/// Operators: a prompt holding one keeps its brackets (`(x+1)*2` is not `x+1*2`).
fn is_operator(text: &str) -> bool {
    matches!(
        text,
        "+" | "-" | "*" | "/" | "=" | "<" | ">" | "^" | "|" | "~" | "\\"
    )
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Split a prompt into words, numbers, symbols, dashes and brackets; sentence punctuation
/// is dropped.
fn lex(text: &str) -> Vec<Raw> {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<Raw> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        let signed = matches!(c, '-' | '+' | '.')
            && next.is_some_and(|n| n.is_ascii_digit())
            && !prev.is_some_and(is_word_char);
        if is_word_char(c) || signed {
            let (token, end) = word_at(&chars, i);
            let kind = if token.starts_with(|c: char| !c.is_alphabetic() && c != '_') {
                Kind::Number
            } else {
                Kind::Word
            };
            out.push(Raw { text: token, kind });
            i = end;
            continue;
        }
        i += 1;
        if c.is_whitespace() {
            continue;
        }
        if is_sentence_punct(c) {
            continue;
        }
        let kind = match c {
            '-' => Kind::Dash,
            '(' | ')' | '[' | ']' | '{' | '}' => Kind::Bracket,
            _ => Kind::Symbol,
        };
        let text = if c == '&' {
            "and".to_owned()
        } else {
            c.to_string()
        };
        out.push(Raw {
            text,
            kind: if c == '&' { Kind::Word } else { kind },
        });
    }
    // A dash counts next to a number ("5 - 3"); elsewhere it is punctuation.
    let keep_dash: Vec<bool> = (0..out.len())
        .map(|k| {
            out[k].kind != Kind::Dash
                || (k > 0 && out[k - 1].kind == Kind::Number)
                || out.get(k + 1).is_some_and(|n| n.kind == Kind::Number)
        })
        .collect();
    let mut k = 0;
    out.retain(|_| {
        k += 1;
        keep_dash[k - 1]
    });
    let math = out
        .iter()
        .any(|t| matches!(t.kind, Kind::Symbol | Kind::Dash) && is_operator(&t.text));
    if !math {
        out.retain(|t| t.kind != Kind::Bracket);
    }
    out
}

/// The word or number starting at `start`, and where it ends. Joins what belongs to one
/// token: `3.5`, `1,000` (as `1000`), `10:30`, `1/2`, `gpt-4`, `os.path`, `don't`, `c++`.
fn word_at(chars: &[char], start: usize) -> (String, usize) {
    let mut token = String::new();
    token.push(chars[start]);
    let mut j = start + 1;
    while j < chars.len() {
        let c = chars[j];
        let prev = chars[j - 1];
        let next = chars.get(j + 1).copied();
        let next_is = |f: fn(char) -> bool| next.is_some_and(f);
        if is_word_char(c) {
            token.push(c);
        } else if c == ','
            && prev.is_ascii_digit()
            && chars[j + 1..]
                .iter()
                .take_while(|d| d.is_ascii_digit())
                .count()
                == 3
        {
            // A thousands separator: dropped, so "1,000" is "1000".
        } else if (matches!(c, '.' | ':' | '/')
            && prev.is_ascii_digit()
            && next_is(|n| n.is_ascii_digit()))
            || (matches!(c, '.' | '-' | '/') && is_word_char(prev) && next_is(is_word_char))
        {
            // `3.5`, `10:30`, `1/2`; `gpt-4`, `os.path`.
            token.push(c);
        } else if matches!(c, '\'' | '’') && prev.is_alphabetic() && next_is(char::is_alphabetic)
        {
            token.push('\'');
        } else if matches!(c, '+' | '#')
            && (prev.is_alphabetic() || prev == '+')
            && !next_is(is_word_char)
        {
            token.push(c);
        } else {
            break;
        }
        j += 1;
    }
    (token, j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        LexicalGuard::default().canonical(s).text()
    }

    #[test]
    fn variants_share_one_canonical_form() {
        let g = LexicalGuard::default();
        let base = "What is the capital of France?";
        for v in [
            "what is the capital of france",
            "WHAT IS THE CAPITAL OF FRANCE",
            "  What   is the capital of France ?!",
            "Could you please tell me what the capital of France is?",
            "Hi! What's the capital of France? Thanks!",
            "What is capital of France",
        ] {
            assert_eq!(g.check(base, v), GuardVerdict::Same, "{v} -> {}", text(v));
        }
    }

    #[test]
    fn opposite_and_changed_questions_refuse() {
        let g = LexicalGuard::default();
        for (a, b) in [
            ("How do I turn on dark mode", "How do I turn off dark mode"),
            (
                "Is it safe to eat raw eggs",
                "Is it not safe to eat raw eggs",
            ),
            (
                "Is it safe to eat raw eggs",
                "Isn't it safe to eat raw eggs",
            ),
            ("What is 2+2?", "What is 2+3?"),
            ("What is 2+2?", "What is 2*2?"),
            ("Convert 5 km to miles", "Convert 5 miles to km"),
            ("What is 3.5 times 2", "What is 35 times 2"),
            ("Capital of France", "Capital of Spain"),
            ("Tips for C++", "Tips for C#"),
            ("How to use Python 2", "How to use Python 3"),
            ("I have a few friends", "I have few friends"),
            ("Boston weather today", "Bolton weather today"),
            ("Is the decimeter bigger", "Is the decameter bigger"),
        ] {
            assert!(!g.check(a, b).passes(), "{a} / {b}");
        }
    }

    #[test]
    fn one_typo_in_a_long_word_is_forgiven() {
        let g = LexicalGuard::default();
        assert_eq!(
            g.check("how to reverse a string", "how to reevrse a string"),
            GuardVerdict::Typos(1)
        );
        assert!(
            !LexicalGuard::strict()
                .check("how to reverse a string", "how to reevrse a string")
                .passes()
        );
        assert!(!g.check("Who is Johnson", "Who is Johnston").passes());
    }

    #[test]
    fn edits() {
        assert!(one_edit_apart(b"reverse", b"reevrse"));
        assert!(one_edit_apart(b"reverse", b"revers"));
        assert!(one_edit_apart(b"reverse", b"reversa"));
        assert!(!one_edit_apart(b"reverse", b"reverse"));
        assert!(!one_edit_apart(b"reverse", b"rveesre"));
    }
}
