//! Colour for people at a terminal: `+` green, `~` yellow, `-` red, errors red; or none
//! (the caller decides: `--color`, `NO_COLOR`, whether the output is a terminal).
use anstyle::{AnsiColor, Style};

/// Whether, and then how, text is coloured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paint {
    pub colour: bool,
}

impl Paint {
    /// No colour at all.
    pub const NONE: Paint = Paint { colour: false };

    /// `text` in `style`, or as it is.
    fn styled(self, style: Style, text: &str) -> String {
        match self.colour {
            true => format!("{}{text}{}", style.render(), style.render_reset()),
            false => text.to_owned(),
        }
    }

    /// The style of a line or sign: `+` added, `-` removed, `~` changed, else none.
    fn of(sign: char) -> Style {
        match sign {
            '+' => AnsiColor::Green.on_default(),
            '-' => AnsiColor::Red.on_default(),
            '~' => AnsiColor::Yellow.on_default(),
            _ => Style::new(),
        }
    }

    /// A sign (`+`, `~`, `-`, ` `) in its colour.
    pub fn sign(self, sign: char) -> String {
        self.styled(Self::of(sign), &sign.to_string())
    }

    /// A whole line in the colour of its `sign`.
    pub fn line(self, sign: char, line: &str) -> String {
        self.styled(Self::of(sign), line)
    }

    /// An error or a warning's mark, in red and bold.
    pub fn error(self, text: &str) -> String {
        self.styled(AnsiColor::Red.on_default().bold(), text)
    }
}
