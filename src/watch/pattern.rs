//! pattern: rules over executor messages and commands, each with its own action.
//!
//! Checked as events arrive, so an `abort` rule stops a running turn the moment the executor
//! starts a matching command. User rules are regexes over the command or message text.
//!
//! The built-in `rm-rf-root` rule does not use a regex: it reads the command the way the shell
//! will execute it ([`shell`]), so that it fires on what would really run and not on text that
//! merely mentions it. The command line is split into simple commands (`;`, `&&`, `||`, `|`,
//! `&`, newlines, subshells, `$(…)` and backquotes), words are tokenised with quotes respected,
//! `bash -lc '…'` / `sh -c "…"` / `eval …` are unwrapped, and leading `sudo`, `env VAR=…`,
//! `command`, `exec`, `nohup`, `time`, `nice`, `timeout` and assignments are skipped. It fires
//! when `rm` gets a recursive flag in any spelling (`-r`, `-R`, `-rf`, `-fr`, `-r -f`,
//! `--recursive`, with or without force and `--no-preserve-root`) and an operand that is the
//! filesystem root or the home directory (`/`, `/*`, `~`, `~/`, `$HOME`, `"$HOME"`, `${HOME}/*`).
//! `grep "rm -rf /" notes.md` or `echo 'rm -rf ~'` do not fire; neither do `rm -rf '~'` or
//! `rm -rf '$HOME'`, which name files called `~` and `$HOME`.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{Action, Finding, Watcher, action_setting};
use crate::event::ExecutorEvent;
use crate::model::Session;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternRule {
    pub name: String,
    pub regex: String,
    #[serde(default = "default_action")]
    pub action: String,
    /// `commands`, `messages` or `both`.
    #[serde(default = "default_on")]
    pub on: String,
}

fn default_action() -> String {
    "nudge".into()
}
fn default_on() -> String {
    "both".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatternConfig {
    pub enabled: bool,
    pub priority: i32,
    /// Keep the built-in rules in addition to `rules`.
    pub builtin_rules: bool,
    pub rules: Vec<PatternRule>,
}

impl Default for PatternConfig {
    fn default() -> Self {
        PatternConfig {
            enabled: true,
            priority: 20,
            builtin_rules: true,
            rules: vec![],
        }
    }
}

/// How a rule decides.
enum Matcher {
    /// A regex over the command or message text.
    Regex(Regex),
    /// The command, parsed as the shell would run it, deletes `/` or the home directory.
    RmRoot,
}

impl Matcher {
    fn is_match(&self, text: &str) -> bool {
        match self {
            Matcher::Regex(re) => re.is_match(text),
            Matcher::RmRoot => shell::deletes_root_or_home(text),
        }
    }
}

struct Compiled {
    name: String,
    matcher: Matcher,
    action: Action,
    commands: bool,
    messages: bool,
}

fn builtin() -> Vec<Compiled> {
    let mut out = vec![Compiled {
        name: "rm-rf-root".into(),
        matcher: Matcher::RmRoot,
        action: Action::Abort,
        commands: true,
        messages: false,
    }];
    // A constant pattern: it compiles (checked by the tests).
    if let Ok(re) = Regex::new(
        r"\b(sk-(ant-)?[A-Za-z0-9_-]{24,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}|xox[baprs]-[A-Za-z0-9-]{10,})\b",
    ) {
        out.push(Compiled {
            name: "api-key".into(),
            matcher: Matcher::Regex(re),
            action: Action::Nudge,
            commands: true,
            messages: true,
        });
    }
    out
}

pub struct Pattern {
    rules: Vec<Compiled>,
}

impl Pattern {
    pub fn new(cfg: &PatternConfig) -> Result<Pattern, String> {
        let mut rules = if cfg.builtin_rules { builtin() } else { vec![] };
        for r in &cfg.rules {
            let re = Regex::new(&r.regex)
                .map_err(|e| format!("watchers.pattern rule `{}`: invalid regex: {e}", r.name))?;
            let (commands, messages) = match r.on.as_str() {
                "commands" => (true, false),
                "messages" => (false, true),
                "both" => (true, true),
                other => {
                    return Err(format!(
                        "watchers.pattern rule `{}`: on = `{other}`; use commands, messages or both",
                        r.name
                    ));
                }
            };
            rules.push(Compiled {
                action: action_setting(&format!("watchers.pattern rule {}", r.name), &r.action)?,
                name: r.name.clone(),
                matcher: Matcher::Regex(re),
                commands,
                messages,
            });
        }
        Ok(Pattern { rules })
    }
}

impl Watcher for Pattern {
    fn name(&self) -> &'static str {
        "pattern"
    }

    fn on_event(&self, _session: &Session, event: &ExecutorEvent) -> Result<Finding, String> {
        let (text, is_command) = match event {
            ExecutorEvent::CommandStarted { command, .. } => (command.as_str(), true),
            ExecutorEvent::AgentMessage { text } => (text.as_str(), false),
            _ => return Ok(None),
        };
        let hit = self
            .rules
            .iter()
            .filter(|r| if is_command { r.commands } else { r.messages })
            .filter(|r| r.matcher.is_match(text))
            .max_by_key(|r| r.action);
        Ok(hit.map(|r| {
            let what = if is_command {
                format!("command `{}`", crate::text::one_line(text, 160))
            } else {
                "agent message".to_string()
            };
            (
                r.action,
                format!("rule `{}` matched the executor's {what}", r.name),
            )
        }))
    }
}

/// A small reader of POSIX shell command lines: enough to find the simple commands a line
/// would run and their words after quote removal. It never executes or expands anything.
mod shell {
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
                "nohup" | "busybox" | "then" | "do" | "else" | "elif" | "if" | "while"
                | "until" | "!" | "{" | "}" => i += 1,
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
                            '\\' if matches!(
                                cs.get(i + 1),
                                Some('$' | '`' | '"' | '\\' | '\n')
                            ) =>
                            {
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
    mod tests {
        use super::*;

        fn texts(line: &str) -> Vec<Vec<String>> {
            let mut nested = Vec::new();
            let mut out: Vec<Vec<String>> = split(line, &mut nested)
                .into_iter()
                .map(|c| c.into_iter().map(|w| w.text).collect())
                .collect();
            for n in nested {
                out.extend(texts(&n));
            }
            out
        }

        #[test]
        fn splits_on_operators_and_respects_quotes() {
            assert_eq!(
                texts("cd /x && rm -rf 'a b' || echo \"c;d\" | tee f; ls\nls -l"),
                vec![
                    vec!["cd", "/x"],
                    vec!["rm", "-rf", "a b"],
                    vec!["echo", "c;d"],
                    vec!["tee", "f"],
                    vec!["ls"],
                    vec!["ls", "-l"],
                ]
            );
            assert_eq!(
                texts("echo a\\ b 'it'\\''s'"),
                vec![vec!["echo", "a b", "it's"]]
            );
            assert_eq!(
                texts("(cd x; make) & wait"),
                vec![vec!["cd", "x"], vec!["make"], vec!["wait"]]
            );
        }

        #[test]
        fn drops_redirections_comments_and_heredoc_bodies() {
            assert_eq!(
                texts("make 2>&1 >out.log # rm -rf /\ncat <<'EOF' > f\nrm -rf /\nEOF\nls"),
                vec![vec!["make"], vec!["cat"], vec!["ls"]]
            );
            assert_eq!(texts("echo hi &>/dev/null"), vec![vec!["echo", "hi"]]);
        }

        #[test]
        fn command_substitutions_are_commands_too() {
            assert_eq!(
                texts("echo $(rm -rf /) `ls`"),
                vec![
                    vec!["echo", "$(…)", "`…`"],
                    vec!["rm", "-rf", "/"],
                    vec!["ls"]
                ]
            );
        }

        #[test]
        fn values_mark_expansions_and_quoted_specials() {
            let mut nested = Vec::new();
            let words = &split(
                "rm ~ ~/ \"$HOME\" '$HOME' '~' \"/*\" /* ${HOME}/x $OTHER",
                &mut nested,
            )[0];
            let v: Vec<bool> = words[1..]
                .iter()
                .map(|w| is_root_or_home(&w.value))
                .collect();
            assert_eq!(
                v,
                [true, true, true, false, false, false, true, false, false]
            );
        }

        #[test]
        fn prefixes_are_skipped() {
            let mut nested = Vec::new();
            for line in [
                "sudo -u root rm -rf /",
                "env -i FOO=1 rm -rf /",
                "X=1 Y=2 command rm -rf /",
                "exec nohup time nice -n 5 timeout -s KILL 10 rm -rf /",
                "if true; then rm -rf /; fi",
            ] {
                let cmds = split(line, &mut nested);
                assert!(
                    cmds.iter()
                        .any(|c| program(c).is_some_and(|(p, _)| p.text == "rm")),
                    "{line}"
                );
            }
            let cmds = split("command -v rm", &mut nested);
            assert!(program(&cmds[0]).is_none());
        }

        #[test]
        fn never_panics_on_arbitrary_input() {
            // Deterministic pseudo-random lines over an alphabet of shell metacharacters.
            let alphabet: Vec<char> = "rm -rf/~$HOME{}()'\"\\`;&|<>#*\n\tabc=2é".chars().collect();
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            for _ in 0..20_000 {
                let mut line = String::new();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                for _ in 0..(x % 40) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    line.push(alphabet[(x % alphabet.len() as u64) as usize]);
                }
                let _ = deletes_root_or_home(&line);
            }
            // Deep nesting stops at MAX_DEPTH instead of recursing without end.
            let deep = "bash -c ".repeat(50) + "'rm -rf /'";
            let _ = deletes_root_or_home(&deep);
            let deep = "$(".repeat(200);
            let _ = deletes_root_or_home(&deep);
        }

        #[test]
        fn shell_c_scripts_are_found() {
            let mut nested = Vec::new();
            let c = &split("/bin/bash -lc 'rm -rf /'", &mut nested)[0];
            assert_eq!(shell_script(&c[1..]), Some("rm -rf /"));
            let c = &split("bash -o pipefail -c 'x'", &mut nested)[0];
            assert_eq!(shell_script(&c[1..]), Some("x"));
            let c = &split("bash script.sh", &mut nested)[0];
            assert_eq!(shell_script(&c[1..]), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rm_rule(p: &Pattern) -> &Compiled {
        p.rules.iter().find(|r| r.name == "rm-rf-root").unwrap()
    }

    #[test]
    fn builtins_catch_root_deletes_and_keys_but_not_ordinary_commands() {
        let p = Pattern::new(&PatternConfig::default()).unwrap();
        let rm = rm_rule(&p);
        for hit in [
            "rm -rf /",
            "sudo rm -rf --no-preserve-root /",
            "rm -fr ~",
            "rm -r -f /",
            "rm --recursive --force /",
            "rm -Rf /*",
            "rm -rf ~/",
            "rm -rf $HOME",
            "rm -rf \"$HOME\"",
            "rm -rf \"${HOME}\"/*",
            "rm / -rf",
            "rm -rf -- /",
            "rm --rec --force //",
            "/bin/rm -rf /",
            "\\rm -rf /",
            "/bin/bash -lc 'rm -rf /'",
            "sh -c \"rm -rf ~\"",
            "bash -c 'cd /tmp && rm -rf \"$HOME\"'",
            "env VAR=1 rm -rf /",
            "cd /tmp; rm -rf / 2>/dev/null",
            "true && sudo -E rm -rf /",
            "echo $(rm -rf /)",
            "eval 'rm -rf /'",
            "nohup rm -rf ~ &",
        ] {
            assert!(rm.matcher.is_match(hit), "should match: {hit}");
        }
        for miss in [
            "rm -rf ./target",
            "rm -rf /tmp/build",
            "rm -f /",
            "rm -rf '~'",
            "rm -rf '$HOME'",
            "rm -rf \"/*\"",
            "rm -rf $HOME/.cache",
            "rm -rf ~/project/target",
            "grep -n \"rm -rf / \" docs/SAFETY.md",
            "echo 'rm -rf ~'",
            "echo rm -rf /",
            "git commit -m 'rm -rf / is dangerous'",
            "cat <<EOF\nrm -rf /\nEOF",
            "ls # rm -rf /",
            "command -v rm",
            "bash script.sh /",
        ] {
            assert!(!rm.matcher.is_match(miss), "should not match: {miss}");
        }
        let key = p.rules.iter().find(|r| r.name == "api-key").unwrap();
        assert!(
            key.matcher
                .is_match("export KEY=sk-ant-abcdefghijklmnopqrstuvwxyz123")
        );
        assert!(!key.matcher.is_match("sk-test"));
    }

    #[test]
    fn user_rules_are_regexes_over_the_text() {
        let p = Pattern::new(&PatternConfig {
            builtin_rules: false,
            rules: vec![PatternRule {
                name: "no-force-push".into(),
                regex: "git push .*--force".into(),
                action: "pause".into(),
                on: "commands".into(),
            }],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.rules.len(), 1);
        assert!(p.rules[0].matcher.is_match("git push origin main --force"));
        assert!(!p.rules[0].matcher.is_match("git push origin main"));
    }

    #[test]
    fn bad_rules_are_config_errors() {
        let cfg = PatternConfig {
            rules: vec![PatternRule {
                name: "x".into(),
                regex: "(".into(),
                action: "nudge".into(),
                on: "both".into(),
            }],
            ..Default::default()
        };
        assert!(Pattern::new(&cfg).err().unwrap().contains("invalid regex"));
    }
}
