//! A small reader of POSIX shell command lines: enough to find the simple commands a line
//! would run and their words after quote removal. It never executes or expands anything.

/// Placeholders for characters that were quoted (so they cannot glob or expand) and for
/// values unknown before run time (`$OTHER`, `$(…)`). Private-use code points never occur
/// in real paths that matter here.
const QUOTED_STAR: char = '\u{E000}';
const QUOTED_TILDE: char = '\u{E001}';
const QUOTED_DOLLAR: char = '\u{E002}';
const UNKNOWN: char = '\u{E003}';
/// What a home-directory expansion (`~`, `$HOME`, `${HOME}`) becomes in [`Word::value`].
const HOME: &str = "$HOME";

/// Nested `sh -c`, `eval` and `$(…)` levels followed.
const MAX_DEPTH: usize = 8;

/// One word of a simple command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Word {
    /// After quote removal, otherwise verbatim: what a program receives as its argument
    /// (with expansions left unexpanded). Used for program names, options and `-c` scripts.
    pub text: String,
    /// What the word means as a path: home expansions become `$HOME`, an unquoted `*`
    /// stays a glob, quoted `*`, `~`, `$` and unknown expansions become placeholders.
    pub value: String,
}

impl Word {
    fn push_lit(&mut self, c: char) {
        self.text.push(c);
        self.value.push(match c {
            '*' => QUOTED_STAR,
            '~' => QUOTED_TILDE,
            '$' => QUOTED_DOLLAR,
            c => c,
        });
    }
    fn push_plain(&mut self, c: char) {
        self.text.push(c);
        self.value.push(c);
    }
}

/// Does the command line delete `/` or the home directory with a recursive `rm`?
pub fn deletes_root_or_home(line: &str) -> bool {
    deletes_at(line, 0)
}

fn deletes_at(line: &str, depth: usize) -> bool {
    any_command(line, depth, &mut |words, d| {
        let Some((prog, args)) = program(words) else {
            return false;
        };
        match basename(&prog.text) {
            "rm" => rm_deletes_root_or_home(args),
            "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "mksh" | "yash" => {
                shell_script(args).is_some_and(|s| deletes_at(s, d + 1))
            }
            "eval" => {
                let joined: Vec<&str> = args.iter().map(|w| w.text.as_str()).collect();
                deletes_at(&joined.join(" "), d + 1)
            }
            _ => false,
        }
    })
}

/// Run `f` on every simple command of `line` (including those inside `$(…)` and
/// backquotes); true if it returns true for any.
fn any_command(line: &str, depth: usize, f: &mut dyn FnMut(&[Word], usize) -> bool) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let mut nested = Vec::new();
    let commands = split(line, &mut nested);
    commands.iter().any(|c| f(c, depth)) || nested.iter().any(|n| any_command(n, depth + 1, f))
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((name, _)) => {
            let mut c = name.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        }
        None => false,
    }
}

/// The program word and its arguments, after the prefixes that only change how a command
/// runs (`sudo`, `env`, assignments, `nohup`, …) and shell keywords (`then`, `do`, `!`, …).
/// `None` for `command -v` / `-V` (looks up, does not run) or an empty command.
pub fn program(words: &[Word]) -> Option<(&Word, &[Word])> {
    let mut i = 0;
    let opt = |i: usize| words.get(i).map(|w| w.text.as_str());
    while let Some(w) = opt(i) {
        if is_assignment(w) {
            i += 1;
            continue;
        }
        match basename(w) {
            "sudo" | "doas" => {
                i += 1;
                while let Some(o) = opt(i) {
                    if o == "--" {
                        i += 1;
                        break;
                    }
                    if !o.starts_with('-') {
                        break;
                    }
                    let takes_value = matches!(
                        o,
                        "-u" | "-g" | "-h" | "-p" | "-C" | "-D" | "-r" | "-t" | "-T" | "-U"
                    );
                    i += if takes_value { 2 } else { 1 };
                }
            }
            "env" => {
                i += 1;
                while let Some(o) = opt(i) {
                    if o == "--" {
                        i += 1;
                        break;
                    }
                    if is_assignment(o) {
                        i += 1;
                    } else if matches!(o, "-u" | "--unset" | "-C" | "--chdir") {
                        i += 2;
                    } else if o.starts_with('-') {
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            "command" => {
                i += 1;
                while let Some(o) = opt(i) {
                    match o {
                        "-p" => i += 1,
                        "-v" | "-V" => return None,
                        "--" => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                }
            }
            "exec" => {
                i += 1;
                while let Some(o) = opt(i) {
                    match o {
                        "-a" => i += 2,
                        "-c" | "-l" | "-cl" | "-lc" => i += 1,
                        "--" => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                }
            }
            "time" => {
                i += 1;
                while opt(i).is_some_and(|o| o.starts_with('-') && o != "--") {
                    i += 1;
                }
            }
            "nice" => {
                i += 1;
                while let Some(o) = opt(i) {
                    if o == "-n" {
                        i += 2;
                    } else if o.starts_with('-') {
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            "timeout" => {
                i += 1;
                while let Some(o) = opt(i) {
                    if matches!(o, "-s" | "-k" | "--signal" | "--kill-after") {
                        i += 2;
                    } else if o.starts_with('-') {
                        i += 1;
                    } else {
                        break;
                    }
                }
                i += 1; // the duration
            }
            "nohup" | "busybox" | "then" | "do" | "else" | "elif" | "if" | "while" | "until"
            | "!" | "{" | "}" => i += 1,
            _ => break,
        }
    }
    let prog = words.get(i)?;
    Some((prog, &words[i + 1..]))
}

/// The script of `sh -c SCRIPT …` (`-c` alone or in a cluster such as `-lc`, `-ec`).
pub fn shell_script(args: &[Word]) -> Option<&str> {
    let mut saw_c = false;
    let mut i = 0;
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        if t == "--" {
            i += 1;
            break;
        }
        if (t.starts_with('-') || t.starts_with('+')) && t.len() > 1 {
            if !t.starts_with("--") && t[1..].contains('c') {
                saw_c = true;
            }
            // `-o option` / `+o option`, `-O shopt` take a value.
            i += if matches!(t, "-o" | "+o" | "-O" | "+O") {
                2
            } else {
                1
            };
            continue;
        }
        break;
    }
    if saw_c {
        args.get(i).map(|w| w.text.as_str())
    } else {
        None
    }
}

/// `rm` arguments: a recursive flag, and an operand that is `/` or the home directory.
fn rm_deletes_root_or_home(args: &[Word]) -> bool {
    let mut recursive = false;
    let mut operands = Vec::new();
    let mut options_done = false;
    for w in args {
        let t = w.text.as_str();
        if !options_done && t == "--" {
            options_done = true;
        } else if !options_done && t.starts_with("--") {
            // GNU getopt accepts any unambiguous prefix (`--rec`).
            let name = t[2..].split('=').next().unwrap_or("");
            let longs = [
                "recursive",
                "force",
                "no-preserve-root",
                "preserve-root",
                "interactive",
                "one-file-system",
                "dir",
                "verbose",
                "help",
                "version",
            ];
            let hits: Vec<&str> = longs
                .iter()
                .copied()
                .filter(|l| !name.is_empty() && l.starts_with(name))
                .collect();
            if hits == ["recursive"] || name == "recursive" {
                recursive = true;
            }
        } else if !options_done && t.starts_with('-') && t.len() > 1 {
            if t[1..].contains(['r', 'R']) {
                recursive = true;
            }
        } else {
            operands.push(w.value.as_str());
        }
    }
    recursive && operands.into_iter().any(is_root_or_home)
}

/// `/`, `//`, `/.`, `/*`, `$HOME`, `$HOME/`, `$HOME/*` (home expansions already `$HOME`).
pub fn is_root_or_home(value: &str) -> bool {
    let mut s = value.to_string();
    loop {
        let before = s.clone();
        if let Some(x) = s.strip_suffix("/*") {
            s = format!("{x}/");
        } else if let Some(x) = s.strip_suffix("/.") {
            s = format!("{x}/");
        } else if s.len() > 1 && s.ends_with('/') {
            s.pop();
        }
        if s == before {
            break;
        }
    }
    s == "/" || s == HOME
}

/// Split a command line into simple commands (lists of words). The bodies of `$(…)` and
/// backquotes are added to `nested` as command lines of their own; here-document bodies
/// and comments are skipped; redirections and their targets are dropped.
pub fn split(line: &str, nested: &mut Vec<String>) -> Vec<Vec<Word>> {
    let cs: Vec<char> = line.chars().collect();
    let n = cs.len();
    let mut b = Builder::default();
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    let mut i = 0;

    while i < n {
        let c = cs[i];
        match c {
            ' ' | '\t' | '\r' => {
                b.end_word();
                i += 1;
            }
            '\n' => {
                b.end_command();
                i += 1;
                // Here-document bodies start on the next line.
                for (delim, strip_tabs) in std::mem::take(&mut heredocs) {
                    while i < n {
                        let end = (i..n).find(|&j| cs[j] == '\n').unwrap_or(n);
                        let body: String = cs[i..end].iter().collect();
                        i = (end + 1).min(n);
                        let body = if strip_tabs {
                            body.trim_start_matches('\t')
                        } else {
                            body.as_str()
                        };
                        if body == delim {
                            break;
                        }
                    }
                }
            }
            '#' if !b.in_word => {
                while i < n && cs[i] != '\n' {
                    i += 1;
                }
            }
            '&' if cs.get(i + 1) == Some(&'>') => {
                // `&>file`, `&>>file`
                b.end_word();
                i += 2;
                if cs.get(i) == Some(&'>') {
                    i += 1;
                }
                b.drop_next_word = true;
            }
            ';' | '&' | '|' | '(' | ')' => {
                b.end_command();
                i += 1;
            }
            '<' | '>' => {
                if b.in_word && !b.quoted && b.word.text.chars().all(|d| d.is_ascii_digit()) {
                    // `2>`: the fd number is part of the operator.
                    b.word = Word::default();
                    b.in_word = false;
                } else {
                    b.end_word();
                }
                if c == '<' && cs.get(i + 1) == Some(&'<') && cs.get(i + 2) != Some(&'<') {
                    // Here-document: `<<WORD` or `<<-WORD`; the delimiter is unquoted.
                    i += 2;
                    let strip = cs.get(i) == Some(&'-');
                    if strip {
                        i += 1;
                    }
                    while i < n && matches!(cs[i], ' ' | '\t') {
                        i += 1;
                    }
                    let mut delim = String::new();
                    while i < n
                        && !matches!(
                            cs[i],
                            ' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')'
                        )
                    {
                        if !matches!(cs[i], '\'' | '"' | '\\') {
                            delim.push(cs[i]);
                        }
                        i += 1;
                    }
                    heredocs.push((delim, strip));
                } else {
                    i += 1;
                    while i < n && matches!(cs[i], '<' | '>' | '&' | '|') {
                        i += 1;
                    }
                    b.drop_next_word = true;
                }
            }
            '\\' => {
                match cs.get(i + 1) {
                    Some('\n') => {}
                    Some(&e) => {
                        b.word.push_lit(e);
                        b.in_word = true;
                        b.quoted = true;
                    }
                    None => {}
                }
                i += 2;
            }
            '\'' => {
                b.in_word = true;
                b.quoted = true;
                i += 1;
                while i < n && cs[i] != '\'' {
                    b.word.push_lit(cs[i]);
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                b.in_word = true;
                b.quoted = true;
                i += 1;
                while i < n && cs[i] != '"' {
                    match cs[i] {
                        '\\' if matches!(cs.get(i + 1), Some('$' | '`' | '"' | '\\' | '\n')) => {
                            if cs[i + 1] != '\n' {
                                b.word.push_lit(cs[i + 1]);
                            }
                            i += 2;
                        }
                        '$' => i = dollar(&cs, i, &mut b.word, true, nested),
                        '`' => i = backquote(&cs, i, &mut b.word, nested),
                        ch => {
                            b.word.push_lit(ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
            }
            '$' => {
                b.in_word = true;
                i = dollar(&cs, i, &mut b.word, false, nested);
            }
            '`' => {
                b.in_word = true;
                i = backquote(&cs, i, &mut b.word, nested);
            }
            '~' if !b.in_word
                && cs.get(i + 1).is_none_or(|x| {
                    matches!(
                        x,
                        '/' | ' ' | '\t' | '\n' | ';' | '&' | '|' | ')' | '<' | '>'
                    )
                }) =>
            {
                b.in_word = true;
                b.word.text.push('~');
                b.word.value.push_str(HOME);
                i += 1;
            }
            ch => {
                b.in_word = true;
                b.word.push_plain(ch);
                i += 1;
            }
        }
    }
    b.end_command();
    b.commands
}

/// The state of [`split`]: finished commands, the command and word being read.
#[derive(Default)]
struct Builder {
    commands: Vec<Vec<Word>>,
    cur: Vec<Word>,
    word: Word,
    in_word: bool,
    /// The word being read has a quoted part (so `2` in `"2">x` is no fd number).
    quoted: bool,
    /// The next word is a redirection target: not an argument.
    drop_next_word: bool,
}

impl Builder {
    fn end_word(&mut self) {
        if self.in_word {
            let w = std::mem::take(&mut self.word);
            if self.drop_next_word {
                self.drop_next_word = false;
            } else {
                self.cur.push(w);
            }
        }
        self.in_word = false;
        self.quoted = false;
    }

    fn end_command(&mut self) {
        self.end_word();
        self.drop_next_word = false;
        if !self.cur.is_empty() {
            self.commands.push(std::mem::take(&mut self.cur));
        }
    }
}

/// Read an expansion starting at `$` (index `i`); returns the index after it.
fn dollar(
    cs: &[char],
    i: usize,
    word: &mut Word,
    in_double_quotes: bool,
    nested: &mut Vec<String>,
) -> usize {
    let n = cs.len();
    match cs.get(i + 1) {
        Some('(') => {
            // `$(…)` (or `$((…))`): a command line of its own; its output is unknown.
            let (body, next) = balanced(cs, i + 2, '(', ')');
            nested.push(body);
            word.text.push_str("$(…)");
            word.value.push(UNKNOWN);
            next
        }
        Some('{') => {
            let end = (i + 2..n).find(|&j| cs[j] == '}').unwrap_or(n);
            let name: String = cs[i + 2..end].iter().collect();
            word.text.push_str(&format!("${{{name}}}"));
            if name == "HOME" {
                word.value.push_str(HOME);
            } else {
                word.value.push(UNKNOWN);
            }
            (end + 1).min(n)
        }
        Some('\'') if !in_double_quotes => {
            // ANSI-C quoting `$'…'`: literal text with backslash escapes.
            let mut j = i + 2;
            while j < n && cs[j] != '\'' {
                if cs[j] == '\\' && j + 1 < n {
                    word.push_lit(cs[j + 1]);
                    j += 2;
                } else {
                    word.push_lit(cs[j]);
                    j += 1;
                }
            }
            (j + 1).min(n)
        }
        Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
            let end = (i + 1..n)
                .find(|&j| !(cs[j].is_ascii_alphanumeric() || cs[j] == '_'))
                .unwrap_or(n);
            let name: String = cs[i + 1..end].iter().collect();
            word.text.push('$');
            word.text.push_str(&name);
            if name == "HOME" {
                word.value.push_str(HOME);
            } else {
                word.value.push(UNKNOWN);
            }
            end
        }
        Some(c) if c.is_ascii_digit() || "@*#?-$!".contains(*c) => {
            word.text.push('$');
            word.text.push(*c);
            word.value.push(UNKNOWN);
            i + 2
        }
        _ => {
            word.push_lit('$');
            i + 1
        }
    }
}

/// Read a backquoted command substitution starting at index `i`.
fn backquote(cs: &[char], i: usize, word: &mut Word, nested: &mut Vec<String>) -> usize {
    let n = cs.len();
    let mut body = String::new();
    let mut j = i + 1;
    while j < n && cs[j] != '`' {
        if cs[j] == '\\' && j + 1 < n {
            body.push(cs[j + 1]);
            j += 2;
        } else {
            body.push(cs[j]);
            j += 1;
        }
    }
    nested.push(body);
    word.text.push_str("`…`");
    word.value.push(UNKNOWN);
    (j + 1).min(n)
}

/// The text up to the `close` matching an already-consumed `open`, skipping quoted parts;
/// returns it and the index after the closing character.
fn balanced(cs: &[char], start: usize, open: char, close: char) -> (String, usize) {
    let n = cs.len();
    let mut depth = 1;
    let mut j = start;
    while j < n {
        match cs[j] {
            '\\' => j += 1,
            '\'' => {
                j += 1;
                while j < n && cs[j] != '\'' {
                    j += 1;
                }
            }
            '"' => {
                j += 1;
                while j < n && cs[j] != '"' {
                    if cs[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return (cs[start..j].iter().collect(), j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    (cs[start.min(n)..].iter().collect(), n)
}

#[cfg(test)]
mod tests;
