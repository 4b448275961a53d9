//! The word lists the lexical guard reads: contractions, the politeness and request frames,
//! spelling variants, misspellings that are no word of their own, number words and the
//! words never forgiven a typo. Data only; guard.rs decides where they apply. Every list is
//! conservative: a pair that should be refused and is not is a wrong answer served, a pair
//! that should be served and is not only costs one upstream call. No synonym list: hardly
//! two English words mean the same in every sense ("pick"/"choose" a lock, "remove"/
//! "erase" in C++), so only spellings of one word compare equal.

/// Contractions, written lowercase, and their expansion. The apostrophe-less forms that
/// are words of their own (`its`, `cant`, `wont`, `well`, `were`, `hell`, `shed`, `ill`,
/// `id`, `whos`) are left out.
pub(super) const CONTRACTIONS: &[(&str, &str)] = &[
    ("can't", "can not"),
    ("cannot", "can not"),
    ("won't", "will not"),
    ("shan't", "shall not"),
    ("let's", "let us"),
    ("dont", "do not"),
    ("doesnt", "does not"),
    ("didnt", "did not"),
    ("isnt", "is not"),
    ("arent", "are not"),
    ("wasnt", "was not"),
    ("werent", "were not"),
    ("havent", "have not"),
    ("hasnt", "has not"),
    ("hadnt", "had not"),
    ("wouldnt", "would not"),
    ("shouldnt", "should not"),
    ("couldnt", "could not"),
    ("whats", "what is"),
    ("thats", "that is"),
    ("wheres", "where is"),
    ("youre", "you are"),
    ("theyre", "they are"),
];

/// The words before `'s` that make it "is" rather than a possessive.
pub(super) const IS_BEFORE_S: &[&str] = &[
    "it", "that", "what", "where", "who", "how", "there", "here", "he", "she", "when", "why",
    "which", "this",
];

/// Greetings and asides dropped at the start of a prompt only when a comma, a colon or the
/// end of a sentence follows them ("Hi, ...", "Good morning! ..."): "good morning in
/// Japanese" keeps them, they are what is asked.
pub(super) const OPENING_ASIDES: &[&[&str]] = &[
    &["hi", "there"],
    &["hello", "there"],
    &["hey", "there"],
    &["hi"],
    &["hello"],
    &["hey"],
    &["greetings"],
    &["good", "morning"],
    &["good", "afternoon"],
    &["good", "evening"],
    &["dear", "assistant"],
    &["excuse", "me"],
    &["sorry", "to", "bother", "you"],
    &["quick", "question"],
    &["question"],
    &["so"],
    &["ok"],
    &["okay"],
    &["um"],
    &["hmm"],
    &["btw"],
    &["just", "wondering"],
    &["out", "of", "curiosity"],
    &["please"],
    &["kindly"],
];

/// Thanks dropped at the end of a prompt only when a comma or the end of a sentence comes
/// before them ("..., thanks", "... ? Thank you!"): "what rhymes with thanks?" keeps them.
pub(super) const CLOSING_ASIDES: &[&[&str]] = &[
    &["thanks", "in", "advance"],
    &["thank", "you", "in", "advance"],
    &["thank", "you", "so", "much"],
    &["thank", "you", "very", "much"],
    &["thanks", "so", "much"],
    &["thanks", "a lot"],
    &["many", "thanks"],
    &["much", "appreciated"],
    &["I", "appreciate", "it"],
    &["appreciate", "it"],
    &["thank", "you"],
    &["thanks"],
    &["thx"],
    &["ty"],
    &["cheers"],
    &["please"],
    &["if", "possible"],
    &["if", "you", "can"],
    &["if", "you", "could"],
    &["if", "you", "do", "not", "mind"],
];

/// Frames that make a request of a command, dropped at the start only when one of
/// [`REQUEST_VERBS`] follows: "could you please explain X" is "explain X". "Can you"
/// also asks whether ("can you speak French?", "can you summarize PDFs?"): it is a frame
/// only in [`ABILITY_FRAMES`].
pub(super) const REQUEST_FRAMES: &[&[&str]] = &[
    &["could", "you", "please"],
    &["would", "you", "please"],
    &["will", "you", "please"],
    &["could", "you", "kindly"],
    &["would", "you", "kindly"],
    &["could", "you"],
    &["would", "you"],
    &["will", "you"],
    &["I", "was", "wondering", "if", "you", "could"],
    &["I", "was", "hoping", "you", "could"],
    &["please"],
    &["kindly"],
];

/// "Can you" frames: dropped only before "tell me", "show me" or "give me" (a request
/// whatever the verb's object).
pub(super) const ABILITY_FRAMES: &[&[&str]] = &[&["can", "you", "please"], &["can", "you"]];

/// The words that make an [`ABILITY_FRAMES`] frame a request.
pub(super) const ABILITY_REQUESTS: &[&[&str]] =
    &[&["tell", "me"], &["show", "me"], &["give", "me"]];

/// The verbs a request frame may stand before: each asks for the same thing as a request
/// and as a command.
pub(super) const REQUEST_VERBS: &[&str] = &[
    "tell",
    "explain",
    "show",
    "give",
    "list",
    "describe",
    "summarize",
    "summarise",
    "define",
    "recommend",
    "suggest",
    "translate",
    "calculate",
    "compare",
    "find",
];

/// Frames that wrap an indirect question, dropped at the start only when a question word
/// follows: "do you know who wrote X" is "who wrote X"; "do you know Python?" keeps it.
pub(super) const INDIRECT_FRAMES: &[&[&str]] = &[
    &["tell", "me"],
    &["do", "you", "know"],
    &["let", "me", "know"],
    &["I", "would", "like", "to", "know"],
    &["I", "want", "to", "know"],
    &["I", "need", "to", "know"],
    &["I", "was", "wondering"],
    &["I", "wonder"],
    &["may", "I", "ask"],
    &["can", "I", "ask"],
];

/// Question words (an indirect question's first word).
pub(super) const WH: &[&str] = &["what", "who", "where", "when", "why", "how", "which"];

/// Spellings of one word (British and American): the same word in every sense. Plural
/// and singular, and words whose spellings part in some sense ("meter" / "metre",
/// "program" / "programme"), are not here.
pub(super) const SPELLINGS: &[(&str, &str)] = &[
    ("colour", "color"),
    ("colours", "colors"),
    ("coloured", "colored"),
    ("favourite", "favorite"),
    ("favourites", "favorites"),
    ("centre", "center"),
    ("centres", "centers"),
    ("organise", "organize"),
    ("organised", "organized"),
    ("organisation", "organization"),
    ("analyse", "analyze"),
    ("analysed", "analyzed"),
    ("grey", "gray"),
    ("behaviour", "behavior"),
    ("neighbour", "neighbor"),
    ("neighbours", "neighbors"),
    ("flavour", "flavor"),
    ("honour", "honor"),
    ("labour", "labor"),
    ("optimise", "optimize"),
    ("summarise", "summarize"),
    ("recognise", "recognize"),
    ("apologise", "apologize"),
    ("realise", "realize"),
    ("theatre", "theater"),
    ("jewellery", "jewelry"),
    ("aluminium", "aluminum"),
];

/// Misspellings that are no English word of their own, and the word meant. Applied only
/// to words written in lower case.
pub(super) const MISSPELLINGS: &[(&str, &str)] = &[
    ("teh", "the"),
    ("hte", "the"),
    ("waht", "what"),
    ("whta", "what"),
    ("hwo", "how"),
    ("adn", "and"),
    ("taht", "that"),
    ("thier", "their"),
    ("recieve", "receive"),
    ("seperate", "separate"),
    ("definately", "definitely"),
    ("occured", "occurred"),
    ("occurence", "occurrence"),
    ("becuase", "because"),
    ("beleive", "believe"),
    ("untill", "until"),
    ("enviroment", "environment"),
    ("goverment", "government"),
    ("wierd", "weird"),
    ("freind", "friend"),
    ("tommorow", "tomorrow"),
    ("tomorow", "tomorrow"),
    ("accomodate", "accommodate"),
    ("adress", "address"),
    ("begining", "beginning"),
    ("existance", "existence"),
    ("foriegn", "foreign"),
    ("grammer", "grammar"),
    ("independant", "independent"),
    ("knowlege", "knowledge"),
    ("neccessary", "necessary"),
    ("necesary", "necessary"),
    ("noticable", "noticeable"),
    ("persistant", "persistent"),
    ("publically", "publicly"),
    ("reccomend", "recommend"),
    ("recomend", "recommend"),
    ("refered", "referred"),
    ("relevent", "relevant"),
    ("succesful", "successful"),
    ("sucessful", "successful"),
    ("truely", "truly"),
    ("langauge", "language"),
    ("languge", "language"),
    ("pyhton", "python"),
    ("javascirpt", "javascript"),
    ("fucntion", "function"),
    ("funtion", "function"),
    ("functoin", "function"),
    ("explian", "explain"),
    ("expalin", "explain"),
    ("diffrence", "difference"),
    ("differnce", "difference"),
    ("differnt", "different"),
    ("wrtie", "write"),
    ("recipie", "recipe"),
    ("weahter", "weather"),
    ("peice", "piece"),
    ("acheive", "achieve"),
    ("arguement", "argument"),
    ("beautifull", "beautiful"),
    ("buisness", "business"),
    ("comittee", "committee"),
    ("concious", "conscious"),
    ("embarass", "embarrass"),
    ("happend", "happened"),
    ("immediatly", "immediately"),
    ("intresting", "interesting"),
    ("libary", "library"),
    ("lenght", "length"),
    ("posible", "possible"),
    ("probaly", "probably"),
    ("remeber", "remember"),
    ("sentance", "sentence"),
    ("similiar", "similar"),
    ("strenght", "strength"),
    ("suprise", "surprise"),
];

/// Number words and the digits they become (so "two" and "2" compare equal, and both
/// compare exactly).
pub(super) const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("seventy", "70"),
    ("eighty", "80"),
    ("ninety", "90"),
    ("hundred", "100"),
    ("thousand", "1000"),
];

/// Words never forgiven a typo when typos are forgiven at all: negations, quantities,
/// ordinals, comparisons, directions, and pairs of real words one letter apart.
pub(super) const PROTECTED: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nothing",
    "nobody",
    "nowhere",
    "neither",
    "nor",
    "without",
    "all",
    "any",
    "some",
    "most",
    "many",
    "much",
    "more",
    "less",
    "least",
    "few",
    "fewer",
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "last",
    "next",
    "previous",
    "million",
    "billion",
    "trillion",
    "before",
    "after",
    "above",
    "below",
    "under",
    "over",
    "inside",
    "outside",
    "higher",
    "lower",
    "upper",
    "bigger",
    "smaller",
    "larger",
    "longer",
    "shorter",
    "older",
    "younger",
    "better",
    "worse",
    "latter",
    "letter",
    "former",
    "farmer",
    "father",
    "farther",
    "further",
    "dessert",
    "desert",
    "affect",
    "effect",
    "accept",
    "except",
    "advice",
    "advise",
    "loose",
    "lose",
    "county",
    "country",
    "prescribe",
    "proscribe",
    "silicon",
    "silicone",
    "abduction",
    "adduction",
    "readline",
    "readlines",
];

/// Word beginnings that mark a unit's scale: a word that starts with one of them is never
/// forgiven a typo ("decimeter" / "decameter").
pub(super) const PROTECTED_STEMS: &[&str] = &[
    "deci", "deca", "deka", "centi", "milli", "micro", "nano", "pico", "kilo", "mega", "giga",
    "tera", "peta", "hecto",
];

/// Negation words, for naming a refusal (they are compared like every other word).
pub(super) const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without",
];

/// Words next to which "or" is an idiom with an order ("more or less", "sooner or later",
/// "whether or not"): never swapped.
pub(super) const ORDERED_PAIRS: &[&str] = &[
    "more", "less", "sooner", "later", "now", "never", "give", "take", "else", "either", "whether",
    "not", "or", "and", "nor", "than",
];

/// Leading words of a clause that may move from the start of a question to its end ("In
/// Python, how do I ...?" asks "How do I ... in Python?").
pub(super) const MOVABLE_CLAUSE_STARTS: &[&str] = &[
    "in", "for", "on", "at", "using", "with", "without", "during", "after", "before", "if", "when",
    "given", "assuming",
];
