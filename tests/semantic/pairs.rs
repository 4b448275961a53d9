//! The labelled pairs of tests/data/semantic_pairs.tsv, read once for every test of this
//! binary: class, whether one answer is right for both, the two prompts (a tab, newline or
//! backslash inside a prompt is written `\t`, `\n`, `\\`).

/// One labelled pair.
pub struct Pair {
    pub class: String,
    pub serve: bool,
    pub a: String,
    pub b: String,
}

/// A prompt as the file writes it, unescaped.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Every pair of the file, in its order; a malformed line fails the test that reads it.
pub fn pairs() -> Vec<Pair> {
    include_str!("../data/semantic_pairs.tsv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("class\t") && !l.is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 4, "four columns: {l}");
            assert!(matches!(cols[1], "serve" | "refuse"), "{l}");
            Pair {
                class: cols[0].to_owned(),
                serve: cols[1] == "serve",
                a: unescape(cols[2]),
                b: unescape(cols[3]),
            }
        })
        .collect()
}
