"""Hand-drawn pixel art for the procedural sprites: the drawings, the colour roles and the colours.

Every drawing is 12 rows of 12 characters. The generator (``procedural.py``) pastes it into the
middle of a 16x16 canvas, puts a dark outline around it and paints each character with this
image's colour for that *role*, so one drawing gives hundreds of different-looking sprites.

Characters (roles):

    .  transparent (a layer below shows through; the background if none)
    _  erase: force background here, even over a layer below
    a A ^   main colour: base, shade, light     (the colour a caption names first)
    b B     second colour: base, shade           (capes, trousers, shields)
    s h     skin, hair
    w k o   white, black (eyes), outline
    m M g   metal light, metal shade, gold
    l L t   leaf green, leaf shade, brown wood / stem

Drawings of front-facing things (heroes, monsters) are exactly left-right symmetric; the tests
check it. Side-facing drawings face right; the generator mirrors half of them to face left.
"""

# role characters in palette order: palette row r paints every pixel of role ROLE_CHARS[r]
ROLE_CHARS = "_oaA^bBshwkmMglLt"  # row 0 is the background ('_' and '.')

# ----------------------------------------------------------------------------- colours (R, G, B)
# named colours, each (light, base, shade); the names are the caption's colour words
COLORS = {
    "red": ((255, 128, 112), (216, 40, 40), (140, 20, 36)),
    "orange": ((255, 196, 112), (240, 128, 32), (168, 76, 20)),
    "yellow": ((255, 244, 160), (244, 204, 36), (180, 136, 20)),
    "green": ((156, 232, 120), (60, 168, 64), (28, 104, 52)),
    "blue": ((136, 192, 255), (48, 108, 220), (28, 56, 148)),
    "purple": ((204, 156, 244), (136, 68, 200), (84, 36, 136)),
    "pink": ((255, 196, 224), (240, 116, 180), (176, 64, 128)),
    "brown": ((204, 152, 100), (140, 88, 48), (88, 52, 28)),
    "grey": ((212, 212, 220), (148, 148, 160), (96, 96, 108)),
    "white": ((255, 255, 255), (232, 232, 240), (184, 184, 200)),
}
BACKGROUNDS = (  # plain, light, so the dark outline always separates sprite from background
    (255, 255, 255), (244, 240, 228), (226, 238, 252), (228, 246, 230), (252, 232, 238), (238, 232, 250),
)
SKINS = ((255, 220, 184), (236, 184, 140), (192, 132, 92), (124, 84, 56))
HAIRS = ((52, 40, 40), (124, 72, 32), (240, 208, 108), (200, 84, 44))
FIXED = {  # roles whose colour never changes
    "o": (36, 30, 46), "w": (255, 255, 255), "k": (20, 20, 32), "m": (204, 208, 220),
    "M": (128, 134, 152), "g": (250, 200, 48), "l": (84, 180, 60), "L": (40, 116, 44), "t": (112, 70, 36),
}

# ----------------------------------------------------------------------------- heroes (front)
HERO_BODIES = {
    "tunic": [
        "....hhhh....",
        "...hhhhhh...",
        "..hhsssshh..",
        "..hskssksh..",
        "...ssssss...",
        "...aassaa...",
        "..aaaaaaaa..",
        ".saaaaaaaas.",
        ".saaAaaAaas.",
        ".s.gggggg.s.",
        "...BBBBBB...",
        "...tt..tt...",
    ],
    "robe": [
        "....hhhh....",
        "...hhhhhh...",
        "..hhsssshh..",
        "..hskssksh..",
        "...swwwws...",
        "....wwww....",
        "..aaawwaaa..",
        ".saaaaaaaas.",
        ".saaAaaAaas.",
        "..aaaggaaa..",
        "..aaaaaaaa..",
        ".AAAAAAAAAA.",
    ],
}
HERO_HEADGEAR = {
    "helmet": [
        "....MbbM....",
        "...MmbbmM...",
        "..MgMMMMgM..",
        "..M.k..k.M..",
    ] + ["." * 12] * 8,
    "crown": [
        "...g_gg_g...",
        "...gggggg...",
    ] + ["." * 12] * 10,
    "hat": [
        ".....bb.....",
        "....bbbb....",
        "bbbbbbbbbbbb",
    ] + ["." * 12] * 9,
}
HERO_CAPE = ["." * 12] * 5 + [
    "..bbbbbbbb..",
    ".bbbbbbbbbb.",
    "bbbbbbbbbbbb",
    "bbbbbbbbbbbb",
    "bbbbbbbbbbbb",
    "bBbbbbbbbbBb",
    "bBbBbbbbBbBb",
]
HERO_HELD = {
    "two swords": [
        "." * 12,
        ".m........m.",
        ".m........m.",
        ".m........m.",
        ".m........m.",
        ".m........m.",
        "ggg......ggg",
        ".t........t.",
    ] + ["." * 12] * 4,
    "a shield": ["." * 12] * 6 + [
        "...bbbbbb...",
        "...bBggBb...",
        "...bggggb...",
        "...bBggBb...",
        "....bbbb....",
        ".....bb.....",
    ],
}

# ----------------------------------------------------------------------------- monsters (front)
MONSTERS = {
    "slime": ["." * 12] * 2 + [
        ".....^^.....",
        "....aaaa....",
        "..aa^aa^aa..",
        ".aaawaawaaa.",
        ".aaakaakaaa.",
        "aaaaaaaaaaaa",
        "aaaakkkkaaaa",
        "AAAAAAAAAAAA",
    ] + ["." * 12] * 2,
    "ghost": [
        "....^^^^....",
        "...^^^^^^...",
        "..^^^^^^^^..",
        "..^kk^^kk^..",
        "..^kk^^kk^..",
        ".^^^^^^^^^^.",
        "^^^^^kk^^^^^",
        ".^^^^kk^^^^.",
        ".^^^^^^^^^^.",
        ".aaaaaaaaaa.",
        ".aa.aaaa.aa.",
        ".a...aa...a.",
    ],
    "bat": ["." * 12] * 2 + [
        "....a..a....",
        "a...aaaa...a",
        "aa.aaaaaa.aa",
        "aaaawaawaaaa",
        "aaaaaaaaaaaa",
        "aaAaawwaaAaa",
        "a.A.aaaa.A.a",
        ".....aa.....",
    ] + ["." * 12] * 2,
    "spider": ["." * 12] * 2 + [
        "....aaaa....",
        "k..aaaaaa..k",
        ".k.aaaaaa.k.",
        "..aawaawaa..",
        "kkaakaakaakk",
        "..aaaaaaaa..",
        ".k.kaaaak.k.",
        "k..k.kk.k..k",
    ] + ["." * 12] * 2,
    "robot": [
        ".....gg.....",
        ".....MM.....",
        "..mmmmmmmm..",
        "..mkkmmkkm..",
        "..mmmmmmmm..",
        "..mMMMMMMm..",
        "...mmmmmm...",
        ".aaaaaaaaaa.",
        "MaaaggggaaaM",
        "MaaaaaaaaaaM",
        "..MM....MM..",
        ".MMM....MMM.",
    ],
    "cyclops": [
        "." * 12,
        ".m........m.",
        ".mm......mm.",
        "..aaaaaaaa..",
        ".aaawwwwaaa.",
        ".aaawkkwaaa.",
        ".aaawwwwaaa.",
        ".aaaaaaaaaa.",
        ".aawkwwkwaa.",
        "..aaaaaaaa..",
        "..aa....aa..",
        ".AAA....AAA.",
    ],
}

MONSTERS_WITH_CROWN = ("slime", "bat", "spider")  # their drawings leave rows 0-1 free
MONSTER_CROWN = ["...g_gg_g...", "...gggggg..."] + ["." * 12] * 10

# ----------------------------------------------------------------------------- side-facing (face right)
SIDE_BODIES = {
    "hero": [
        "....hhhhh...",
        "...hhhhhhh..",
        "...hhhsssss.",
        "...hhssskss.",
        "....hsssss..",
        ".....sss....",
        "....aaaaa...",
        "...aaaaaas..",
        "...aaAaaas..",
        "....gggg....",
        "....BB.BB...",
        "...tt...tt..",
    ],
    "bird": ["." * 12] * 2 + [
        ".......aaa..",
        "......aaaka.",
        "......aaaagg",
        ".aa..aaaaa..",
        "aaaaaaaaaa..",
        ".aaaAAAaaa..",
        "..aaAAAaa...",
        "...aaaaa....",
        ".....g.g....",
        "....gg.gg...",
    ],
    "cat": ["." * 12] * 2 + [
        "........a.a.",
        "........aaa.",
        "a.......akag",
        "a.......aaaa",
        ".aaaaaaaaa..",
        ".aaaaaaaaa..",
        ".aAaaaaaAa..",
        ".a.a...a.a..",
        ".a.a...a.a..",
        "." * 12,
    ],
}
SIDE_EXTRAS = {  # only for the side-facing hero
    "a sword": [
        "..........m.",
        "..........m.",
        "..........m.",
        "..........m.",
        "..........m.",
        "..........m.",
        ".........ggg",
        "..........t.",
    ] + ["." * 12] * 4,
    "a helmet": [
        "....MMMMM...",
        "..bMmmmmmM..",
        "..bMgMMMM...",
    ] + ["." * 12] * 9,
}
SIDE_CAPE = ["." * 12] * 5 + [
    "...bb.......",
    "..bbb.......",
    "..bbb.......",
    ".bbbb.......",
    ".bbbb.......",
    "bbbbb.......",
    "bBbB........",
]

# ----------------------------------------------------------------------------- food
FOODS = {
    "apple": [
        "......t.....",
        "......t.....",
        "..aaa.taaa..",
        ".aaaaaaaaaa.",
        ".a^aaaaaaaa.",
        "a^^aaaaaaaaa",
        "a^aaaaaaaaAa",
        "aaaaaaaaaaAa",
        "aaaaaaaaaAAa",
        ".aaaaaaaAAa.",
        "..aaaaaAAa..",
        "...aaa.aa...",
    ],
    "cherries": [
        "........t...",
        ".......tt...",
        "......t..t..",
        ".....t...t..",
        "....t.....t.",
        "...t......t.",
        ".aaaa.....t.",
        "a^aaaa..aaaa",
        "a^aaaA.a^aaa",
        "aaaaAA.a^aaa",
        ".aAAA..aaaAA",
        "........AAA.",
    ],
    "pear": [
        ".....t......",
        ".....t......",
        ".....aa.....",
        "....aaaa....",
        "....a^aa....",
        "...a^aaaa...",
        "...a^aaaa...",
        "..a^aaaaaa..",
        ".a^aaaaaaaA.",
        ".aaaaaaaaAA.",
        ".aaaaaaaAAA.",
        "..aaaaaAAA..",
    ],
    "mushroom": ["." * 12] + [
        "....aaaa....",
        "..aaawwaaa..",
        ".aawwaaaawa.",
        ".aawwaaaaaa.",
        "aaaaaaawwaaa",
        "aAAaaaawwAAa",
        "...wwwwww...",
        "....wwwm....",
        "....wwwm....",
        "....wwwm....",
        "...wwwwmm...",
    ],
    "strawberry": [
        "." * 12,
        "....l..l....",
        "..lllllll...",
        ".aaLlLlLaa..",
        ".agaaagaaaa.",
        ".aaaaaaagaa.",
        "..agaagaaa..",
        "..aaaaaaga..",
        "...aagaaa...",
        "...aaaaga...",
        "....agaa....",
        ".....aa.....",
    ],
    "grapes": [
        ".....t......",
        ".....t......",
        ".^aa^aa^aa..",
        ".aaAaaAaaA..",
        ".aAAaAAaAA..",
        "...^aa^aa...",
        "...aaAaaA...",
        "...aAAaAA...",
        "....^aa.....",
        "....aaA.....",
        "....aAA.....",
        "." * 12,
    ],
}
FOOD_LEAVES = {  # an optional leaf, drawn over the food it belongs to
    "apple": ["........ll..", ".......lllL.", "........LL.."] + ["." * 12] * 9,
    "cherries": ["." * 12, ".........ll.", "........lllL", ".........LL."] + ["." * 12] * 8,
    "pear": [".......ll...", "......lllL..", "......LL...."] + ["." * 12] * 9,
    "grapes": [".......ll...", "......lllL..", ".......LL..."] + ["." * 12] * 9,
}
FOOD_COLORS = {  # plausible colours for each food
    "apple": ("red", "green", "yellow"),
    "cherries": ("red", "pink", "purple"),
    "pear": ("green", "yellow"),
    "mushroom": ("red", "brown", "purple", "blue"),
    "strawberry": ("red",),
    "grapes": ("purple", "green"),
}
