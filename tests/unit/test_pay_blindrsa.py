"""cloudpal.pay.blindrsa against RFC 9474 Appendix A, `cryptography`'s own RSA-PSS, and fuzzing.

The Appendix A vectors below are copied verbatim (hex) from the RFC 9474 test vector file that
apple/swift-crypto ships as Tests/CryptoExtrasVectors/rfc9474.json (the RFC's JSON form: name,
p, q, n, e, d, msg, msg_prefix, prepared_msg, salt, encoded_msg, inv, blinded_msg, blind_sig,
sig); the same blinded_msg/sig values appear in cloudflare/circl and other RFC 9474
implementations. All four named variants are checked: with the vector's msg_prefix, salt and r
(= inv^-1 mod n) injected, prepare/blind/blind_sign/finalize must reproduce every output byte.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpal.errors import InvalidInput
from cloudpal.pay import blindrsa as b
from cloudpal.pay.blindrsa import BlindRSAError

H = bytes.fromhex

# ---- RFC 9474 Appendix A, copied verbatim (hex). One 4096-bit key, one message for all four.
_P = (
    "e1f4d7a34802e27c7392a3cea32a262a34dc3691bd87f3f310dc75673488930559c120fd0410194fb8a0da55bd0b8122"
    "7e843fdca6692ae80e5a5d414116d4803fca7d8c30eaaae57e44a1816ebb5c5b0606c536246c7f11985d731684150b63"
    "c9a3ad9e41b04c0b5b27cb188a692c84696b742a80d3cd00ab891f2457443dadfeba6d6daf108602be26d7071803c671"
    "05a5426838e6889d77e8474b29244cefaf418e381b312048b457d73419213063c60ee7b0d81820165864fef93523c963"
    "5c22210956e53a8d96322493ffc58d845368e2416e078e5bcb5d2fd68ae6acfa54f9627c42e84a9d3f2774017e32ebca"
    "06308a12ecc290c7cd1156dcccfb2311"
)
_Q = (
    "c601a9caea66dc3835827b539db9df6f6f5ae77244692780cd334a006ab353c806426b60718c05245650821d39445d3a"
    "b591ed10a7339f15d83fe13f6a3dfb20b9452c6a9b42eaa62a68c970df3cadb2139f804ad8223d56108dfde30ba7d367"
    "e9b0a7a80c4fdba2fd9dde6661fc73fc2947569d2029f2870fc02d8325acf28c9afa19ecf962daa7916e21afad09eb62"
    "fe9f1cf91b77dc879b7974b490d3ebd2e95426057f35d0a3c9f45f79ac727ab81a519a8b9285932d9b2e5ccd347e59f3"
    "f32ad9ca359115e7da008ab7406707bd0e8e185a5ed8758b5ba266e8828f8d863ae133846304a2936ad7bc7c9803879d"
    "2fc4a28e69291d73dbd799f8bc238385"
)
_N = (
    "aec4d69addc70b990ea66a5e70603b6fee27aafebd08f2d94cbe1250c556e047a928d635c3f45ee9b66d1bc628a03bac"
    "9b7c3f416fe20dabea8f3d7b4bbf7f963be335d2328d67e6c13ee4a8f955e05a3283720d3e1f139c38e43e0338ad058a"
    "9495c53377fc35be64d208f89b4aa721bf7f7d3fef837be2a80e0f8adf0bcd1eec5bb040443a2b2792fdca522a7472ae"
    "d74f31a1ebe1eebc1f408660a0543dfe2a850f106a617ec6685573702eaaa21a5640a5dcaf9b74e397fa3af18a2f1b7c"
    "03ba91a6336158de420d63188ee143866ee415735d155b7c2d854d795b7bc236cffd71542df34234221a0413e142d8c6"
    "1355cc44d45bda94204974557ac2704cd8b593f035a5724b1adf442e78c542cd4414fce6f1298182fb6d8e53cef1adfd"
    "2e90e1e4deec52999bdc6c29144e8d52a125232c8c6d75c706ea3cc06841c7bda33568c63a6c03817f722b50fcf89823"
    "7d788a4400869e44d90a3020923dc646388abcc914315215fcd1bae11b1c751fd52443aac8f601087d8d42737c18a3fa"
    "11ecd4131ecae017ae0a14acfc4ef85b83c19fed33cfd1cd629da2c4c09e222b398e18d822f77bb378dea3cb360b605e"
    "5aa58b20edc29d000a66bd177c682a17e7eb12a63ef7c2e4183e0d898f3d6bf567ba8ae84f84f1d23bf8b8e261c3729e"
    "2fa6d07b832e07cddd1d14f55325c6f924267957121902dc19b3b32948bdead5"
)
_E = "010001"
_D = (
    "0d43242aefe1fb2c13fbc66e20b678c4336d20b1808c558b6e62ad16a287077180b177e1f01b12f9c6cd6c52630257cc"
    "ef26a45135a990928773f3bd2fc01a313f1dac97a51cec71cb1fd7efc7adffdeb05f1fb04812c924ed7f4a8269925dad"
    "88bd7dcfbc4ef01020ebfc60cb3e04c54f981fdbd273e69a8a58b8ceb7c2d83fbcbd6f784d052201b88a9848186f2a45"
    "c0d2826870733e6fd9aa46983e0a6e82e35ca20a439c5ee7b502a9062e1066493bdadf8b49eb30d9558ed85abc7afb29"
    "b3c9bc644199654a4676681af4babcea4e6f71fe4565c9c1b85d9985b84ec1abf1a820a9bbebee0df1398aae2c85ab58"
    "0a9f13e7743afd3108eb32100b870648fa6bc17e8abac4d3c99246b1f0ea9f7f93a5dd5458c56d9f3f81ff2216b3c368"
    "0a13591673c43194d8e6fc93fc1e37ce2986bd628ac48088bc723d8fbe293861ca7a9f4a73e9fa63b1b6d0074f5dea2a"
    "624c5249ff3ad811b6255b299d6bc5451ba7477f19c5a0db690c3e6476398b1483d10314afd38bbaf6e2fbdbcd62c3ca"
    "9797a420ca6034ec0a83360a3ee2adf4b9d4ba29731d131b099a38d6a23cc463db754603211260e99d19affc902c915d"
    "7854554aabf608e3ac52c19b8aa26ae042249b17b2d29669b5c859103ee53ef9bdc73ba3c6b537d5c34b6d8f034671d7"
    "f3a8a6966cc4543df223565343154140fd7391c7e7be03e241f4ecfeb877a051"
)
_MSG = "8f3dc6fb8c4a02f4d6352edf0907822c1210a9b32f9bdda4c45a698c80023aa6b59f8cfec5fdbb36331372ebefedae7d"
_SALT = "051722b35f458781397c3a671a7d3bd3096503940e4c4f1aaa269d60300ce449555cd7340100df9d46944c5356825abf"
_INV = (
    "80682c48982407b489d53d1261b19ec8627d02b8cda5336750b8cee332ae260de57b02d72609c1e0e9f28e2040fc65b6"
    "f02d56dbd6aa9af8fde656f70495dfb723ba01173d4707a12fddac628ca29f3e32340bd8f7ddb557cf819f6b01e445ad"
    "96f874ba235584ee71f6581f62d4f43bf03f910f6510deb85e8ef06c7f09d9794a008be7ff2529f0ebb69decef646387"
    "dc767b74939265fec0223aa6d84d2a8a1cc912d5ca25b4e144ab8f6ba054b54910176d5737a2cff011da431bd5f2a0d2"
    "d66b9e70b39f4b050e45c0d9c16f02deda9ddf2d00f3e4b01037d7029cd49c2d46a8e1fc2c0c17520af1f4b5e25ba396"
    "afc4cd60c494a4c426448b35b49635b337cfb08e7c22a39b256dd032c00adddafb51a627f99a0e1704170ac1f1912e49"
    "d9db10ec04c19c58f420212973e0cb329524223a6aa56c7937c5dffdb5d966b6cd4cbc26f3201dd25c80960a1a111b32"
    "947bb78973d269fac7f5186530930ed19f68507540eed9e1bab8b00f00d8ca09b3f099aae46180e04e3584bd7ca054df"
    "18a1504b89d1d1675d0966c4ae1407be325cdf623cf13ff13e4a28b594d59e3eadbadf6136eee7a59d6a444c9eb4e219"
    "8e8a974f27a39eb63af2c9af3870488b8adaad444674f512133ad80b9220e09158521614f1faadfe8505ef57b7df6813"
    "048603f0dd04f4280177a11380fbfc861dbcbd7418d62155248dad5fdec0991f"
)

VECTORS: list[dict[str, str]] = [
    {
        "name": "RSABSSA-SHA384-PSS-Randomized",
        "msg_prefix": "8417e699b219d583fb6216ae0c53ca0e9723442d02f1d1a34295527e7d929e8b",
        "salt": _SALT,
        "inv": _INV,
        "blinded_msg": (
            "aa3ee045138d874669685ffaef962c7694a9450aa9b4fd6465db9b3b75a522bb921c4c0fdcdfae9667593255099cff51"
            "f5d3fd65e8ffb9d3b3036252a6b51b6edfb3f40382b2bbf34c0055e4cbcc422850e586d84f190cd449af11dc65545f5f"
            "e26fd89796eb87da4bda0c545f397cddfeeb56f06e28135ec74fd477949e7677f6f36cfae8fd5c1c5898b03b9c244cf6"
            "d1a4fb7ad1cb43aff5e80cb462fac541e72f67f0a50f1843d1759edfaae92d1a916d3f0efaf4d650db416c3bf8abdb54"
            "14a78cebc97de676723cb119e77aea489f2bbf530c440ebc5a75dccd3ebf5a412a5f346badd61bee588e5917bdcce9dc"
            "33c882e39826951b0b8276c6203971947072b726e935816056ff5cb11a71ca2946478584126bb877acdf87255f26e6cc"
            "a4e0878801307485d3b7bb89b289551a8b65a7a6b93db010423d1406e149c87731910306e5e410b41d4da3234624e74f"
            "92845183e323cf7eb244f212a695f8856c675fbc3a021ce649e22c6f0d053a9d238841cf3afdc2739f99672a419ae13c"
            "17f1f8a3bc302ec2e7b98e8c353898b7150ad8877ec841ea6e4b288064c254fefd0d049c3ad196bf7ffa535e74585d01"
            "20ce728036ed500942fbd5e6332c298f1ffebe9ff60c1e117b274cf0cb9d70c36ee4891528996ec1ed0b178e9f3c0c0e"
            "6120885f39e8ccaadbb20f3196378c07b1ff22d10049d3039a7a92fe7efdd95d"
        ),
        "blind_sig": (
            "3f4a79eacd4445fca628a310d41e12fcd813c4d43aa4ef2b81226953248d6d00adfee6b79cb88bfa1f99270369fd063c"
            "023e5ed546719b0b2d143dd1bca46b0e0e615fe5c63d95c5a6b873b8b50bc52487354e69c3dfbf416e7aca18d5842c89"
            "b676efdd38087008fa5a810161fcdec26f20ccf2f1e6ab0f9d2bb93e051cb9e86a9b28c5bb62fd5f5391379f887c0f70"
            "6a08bcc3b9e7506aaf02485d688198f5e22eefdf837b2dd919320b17482c5cc54271b4ccb41d267629b3f844fd63750b"
            "01f5276c79e33718bb561a152acb2eb36d8be75bce05c9d1b94eb609106f38226fb2e0f5cd5c5c39c59dda166862de49"
            "8b8d92f6bcb41af433d65a2ac23da87f39764cb64e79e74a8f4ce4dd567480d967cefac46b6e9c06434c371563583435"
            "7edd2ce6f105eea854ac126ccfa3de2aac5607565a4e5efaac5eed491c335f6fc97e6eb7e9cea3e12de38dfb315220c0"
            "a3f84536abb2fdd722813e083feda010391ac3d8fd1cd9212b5d94e634e69ebcc800c4d5c4c1091c64afc37acf563c7f"
            "c0a6e4c082bc55544f50a7971f3fb97d5853d72c3af34ffd5ce123998be5360d1059820c66a81e1ee6d9c1803b5b62af"
            "6bc877526df255b6d1d835d8c840bebbcd6cc0ee910f17da37caf8488afbc08397a1941fcc79e76a5888a95b3d5405e1"
            "3f737bea5c78d716a48eb9dc0aec8de39c4b45c6914ad4a8185969f70b1adf46"
        ),
        "sig": (
            "191e941c57510e22d29afad257de5ca436d2316221fe870c7cb75205a6c071c2735aed0bc24c37f3d5bd960ab97a829a"
            "508f966bbaed7a82645e65eadaf24ab5e6d9421392c5b15b7f9b640d34fec512846a3100b80f75ef51064602118c1a77"
            "d28d938f6efc22041d60159a518d3de7c4d840c9c68109672d743d299d8d2577ef60c19ab463c716b3fa75fa56f57353"
            "49d414a44df12bf0dd44aa3e10822a651ed4cb0eb6f47c9bd0ef14a034a7ac2451e30434d513eb22e68b7587a8de9b4e"
            "63a059d05c8b22c7c51e2cfee2d8bef511412e93c859a13726d87c57d1bc4c2e68ab121562f839c3a3d233e87ed63c69"
            "b7e57525367753fbebcc2a9805a2802659f5888b2c69115bf865559f10d906c09d048a0d71bfee4b33857393ec2b69e4"
            "51433496d02c9a7910abb954317720bbde9e69108eafc3e90bad3d5ca4066d7b1e49013fa04e948104a1dd82b12509ec"
            "b146e948c54bd8bfb5e6d18127cd1f7a93c3cf9f2d869d5a78878c03fe808a0d799e910be6f26d18db61c485b303631d"
            "3568368fc41986d08a95ea6ac0592240c19d7b22416b9c82ae6241e211dd5610d0baaa9823158f9c32b66318f5529491"
            "b7eeadcaa71898a63bac9d95f4aa548d5e97568d744fc429104e32edd9c87519892a198a30d333d427739ffb9607b092"
            "e910ae37771abf2adb9f63bc058bf58062ad456cb934679795bbdfcdfad5e0f2"
        ),
    },
    {
        "name": "RSABSSA-SHA384-PSSZERO-Randomized",
        "msg_prefix": "84ea86c8cf3beedfed73beceabd792027c609d1100bf041fdd60d826a718130d",
        "salt": "",
        "encoded_msg": (
            "37f4ea66054b3570f2c46f43125a8df8d751a81db1003edcc70e9888cb3d0fa71bb7634437a779c1bf9e84e88b347989"
            "4490ee41cd69fc8e911478326fe8460d1699f96abedde22ba0ba25a02f78bae77eb039decd41e6cd40fecc28f301c94d"
            "5644eb3e55b316569e2bec3ccf8e33b06eb6defca5fe672613d33ea60f84daa560ded4c1c5e65613fb19e090d0fc96a1"
            "394e29dfad6a7644362bf30bdc90c7ca0a065190f5a099b5c33ae787b872518a724d9aa139229656eb21053bbe86c38f"
            "6d03b4c6fa37a900935d9b8d19e0c394be4af6af028680996e3fd533b6698ce9e2ed6a9f96d4d3a682027ae5240040e5"
            "5d75017dc303b7142c1f7e17b79778a94431398d21dc0cc7ae454cc0d6cf4db4d588d3fd15fd7f71576052fd2a52d688"
            "f99790dfb13808ecb24b6b9e9a43a8c0105670ec3ad8d6318a9c6a9cef9eb99b36d74b8e83dbacf6e8100e135b609850"
            "b34a4b01091b263678d7cd9905af2ffda801a2888d863a25211903b43cb5e59f5dba6bc18713ce4f028f1774c5936649"
            "12f1d181d4544a13a1da354332d8595f59cf5af260a8aaf21a6bc948b5d5d4a520c1f72c216259dc12a33c2a3bd4d32f"
            "f2bf3de2ffe76e51f8af030b40fadc5899e740da20be1dd5a50f701292ceaee51fa35d9a047f3efc6543dc583fb3f23a"
            "beade39c2a5b5b352de26d7a11267435be7bffa8f2292e139fad923dbaf863bc"
        ),
        "inv": _INV,
        "blinded_msg": (
            "4c1b82d9b97b968b2ce0754e326abd49e3d723ed937d84bead34b6a834483b43d510bf62ca47683ed366d94d3d357b27"
            "0a85cf2cc2ddd171141b45d7549d5373cf67d14f6f462c14ebded906793144faba37f129c0f3172854ec0f854e555552"
            "eec5a30c87788f1039814594f04348709e26a883be82affff207b1886b75c037f43f847f45d89bcbf210c22ffcdf8118"
            "ce8a526b3723e6209c26319f8f5d2adcf0b637031c9fdf53470a915c587e30287ba88ed4f1cd5e93cf3d4990acf31fff"
            "dbfddec80ae0b728d5b4c612a396fd81acaa65566a4dc1c24624f44fd10cdba05f3d0bed2e69bb0d13d41a9f1b4e67aa"
            "566520778733ced5e6260f4d1982f63bb835442acffe3cb87f5f8ec6bb84226e0eab787159d08e57604b13557ceea97f"
            "2c4ad0631accf898f302df86f0b64354ec0b3bdf1b4e2a4deb4d38f655ea8d80de4cc19aa06ffcd56e348faf894c8774"
            "c53235ddcc152d80cf66b417eee4d182781bab8c979937a3c7502d8f39c57c4f09884de5a7247f2539910a96e4b15f9a"
            "3df88edc21a13030af357467a99dca50dba4afe4a6185a240ac8f1d8aab2e83443025f94e1af930f56f78661369cc679"
            "0701f31b83aec40f96a72c7f7ba13b4ebdd8e24e7351f4ffba0a7c072cb28f13aff06cd02368491044fcc536213b2e3b"
            "1cf6ca81cf2097b7b19d2b36bd246f390f53768f1c2e56113ea91b33c7cfa647"
        ),
        "blind_sig": (
            "4894f64d7214c216282d9842cbf7e7cccd9c0dcb1f4294a6bdeccd4c4c2446160d7cac7892f01b70dfa69f533891d2fb"
            "b447f7cf7541d1b504a2d46fc1bb6de26b345972aada8ebce280b906f3a10a13208f77ef896fbe6bc4504327fd4c5c8f"
            "03211d45ae9672e9f4be0f4900762ba2a7177a58b90d6dd1263faf2b7a5f15d50a7b00e733742c1b6a1ea4eb5fbfb407"
            "abf14496ab26b50cf1a5a56dea616b7a6a5595777400571a751c682b9fdd6badb3f72292f314f4ba2ba0f394f91676a4"
            "bb12e60ea08c977f7082be6357c1ca82fe3301fe5fb4128609bee2410db0481aea3a5737fb0bce9381272c2202644f66"
            "2e99f64bf1190d66e230cc0371ec33fe32fe725dfd872041914d39462a909414a780c9aab394af443199eba56c83986d"
            "22d57d4421b41ff8e5bec537d271223adb34d26c64989048a88d8f352a06a7cc153e216a6bed9548bb38d2a1600b2f34"
            "03289df6df74aec525ef9e413b7140a7c1a914dedd74a336f1beed39a8e5e2cef76cac094df0dbb3fa55d4b7ee781c74"
            "bed3bd8bc7aa6ef3f1dbfa4674945720ec93dafa6d0650229ab75e3fae687327fac081cf4bb376e02a2b73314c54c12f"
            "88572c28980f13aba5731bc5a3a60575ea116c8ea2fe5009168deb1255026c9310783ff7f644255d3e1691e194db1bab"
            "d7780b9a5dc0cb3de2b700d12f49cbe4db51ca2f3c8a58b09e854cc71e8070ab"
        ),
        "sig": (
            "195363ba25e4bf763f6538c86865785f93f4ea6092da3ad200d41b99eb0eb0869fa792df619fd8fa5923d5d03d5882fa"
            "ae6d25054118deef5e4a6a252dd5afb0dac262b74c391090b1575fbafd959d26bc294f47fb45a2c1c209932c4f94b243"
            "94eded91fbdd015e1a85dde63c9e77a0283f812cad1192d86432c51331e46fd4f3771bbafb929f847a19cb05e5f79b6b"
            "519d67e8f005951e53656be97cb612d2f506618b366403b34648451d6fbc7318c2f3f583cc6fa17bf2108398f9284e06"
            "02187904406a9322f1e7b8016ca9ad11b835756df862c465c420535e25faa48bf341f7ee8192be47fa875791f32f56d5"
            "e631d237060688f052426dee5b0b2b74ca5f830e82a453379eedb541fa4fcdaa19dae6509401e3cdd4c40f5c9243db3f"
            "6d7115c4e8cd6db8290723ab01d9d0d7e355a97a01547800e43f11736668c3f8908848d759c33a67a2f506abc3f6871c"
            "be625b1bc71eb06d785a59501396712c581a60d6ccc450d2f4eb4cf08ae0dbfa45c2860425be90cc4cd4c989495bbd29"
            "63e19c59ae5d90d1ca884e80d654b5f2cd6a80c3588b514ee91c802736f594c340397b316a97e9c70b0609955b6c3ee0"
            "6f4760d9377f0797a0411a244db395bb8b711ef79fbcb5589226174029be79a72dcd6f4ca566b7b1b9a27e43b5c02a9a"
            "579d60bdda183398d66d76e0e8eceb1af2f27633589d043bcdc041683b31f7f1"
        ),
    },
    {
        "name": "RSABSSA-SHA384-PSS-Deterministic",
        "msg_prefix": "",
        "salt": _SALT,
        "encoded_msg": (
            "6e0c464d9c2f9fbc147b43570fc4f238e0d0b38870b3addcf7a4217df912ccef17a7f629aa850f63a063925f312d61d6"
            "437be954b45025e8282f9c0b1131bc8ff19a8a928d859b37113db1064f92a27f64761c181c1e1f9b251ae5a2f8a40475"
            "73b67a270584e089beadcb13e7c82337797119712e9b849ff56e04385d144d3ca9d8d92bf78adb20b5bbeb3685f17038"
            "ec6afade3ef354429c51c687b45a7018ee3a6966b3af15c9ba8f40e6461ba0a17ef5a799672ad882bab02b518f9da7c1"
            "a962945c2e9b0f02f29b31b9cdf3e633f9d9d2a22e96e1de28e25241ca7dd04147112f578973403e0f4fd80865965475"
            "d22294f065e17a1c4a201de93bd14223e6b1b999fd548f2f759f52db71964528b6f15b9c2d7811f2a0a35d534b821630"
            "1c47f4f04f412cae142b48c4cdff78bc54df690fd43142d750c671dd8e2e938e6a440b2f825b6dbb3e19f1d7a3c01504"
            "28a47948037c322365b7fe6fe57ac88d8f80889e9ff38177bad8c8d8d98db42908b389cb59692a58ce275aa15acb032c"
            "a951b3e0a3404b7f33f655b7c7d83a2f8d1b6bbff49d5fcedf2e030e80881aa436db27a5c0dea13f32e7d460dbf01240"
            "c2320c2bb5b3225b17145c72d61d47c8f84d1e19417ebd8ce3638a82d395cc6f7050b6209d9283dc7b93fecc04f3f9e7"
            "f566829ac41568ef799480c733c09759aa9734e2013d7640dc6151018ea902bc"
        ),
        "inv": _INV,
        "blinded_msg": (
            "10c166c6a711e81c46f45b18e5873cc4f494f003180dd7f115585d871a28930259654fe28a54dab319cc5011204c8373"
            "b50a57b0fdc7a678bd74c523259dfe4fd5ea9f52f170e19dfa332930ad1609fc8a00902d725cfe50685c95e5b2968c9a"
            "2828a21207fcf393d15f849769e2af34ac4259d91dfd98c3a707c509e1af55647efaa31290ddf48e0133b798562af5ea"
            "bd327270ac2fb6c594734ce339a14ea4fe1b9a2f81c0bc230ca523bda17ff42a377266bc2778a274c0ae5ec5a8cbbe36"
            "4fcf0d2403f7ee178d77ff28b67a20c7ceec009182dbcaa9bc99b51ebbf13b7d542be337172c6474f2cd3561219fe0df"
            "a3fb207cff89632091ab841cf38d8aa88af6891539f263adb8eac6402c41b6ebd72984e43666e537f5f5fe27b2b5aa11"
            "4957e9a580730308a5f5a9c63a1eb599f093ab401d0c6003a451931b6d124180305705845060ebba6b0036154fcef3e5"
            "e9f9e4b87e8f084542fd1dd67e7782a5585150181c01eb6d90cb95883837384a5b91dbb606f266059ecc51b5acbaa280"
            "e45cfd2eec8cc1cdb1b7211c8e14805ba683f9b78824b2eb005bc8a7d7179a36c152cb87c8219e5569bba911bb32a1b9"
            "23ca83de0e03fb10fba75d85c55907dda5a2606bf918b056c3808ba496a4d95532212040a5f44f37e1097f26dc27b98a"
            "51837daa78f23e532156296b64352669c94a8a855acf30533d8e0594ace7c442"
        ),
        "blind_sig": (
            "364f6a40dbfbc3bbb257943337eeff791a0f290898a6791283bba581d9eac90a6376a837241f5f73a78a5c6746e1306b"
            "a3adab6067c32ff69115734ce014d354e2f259d4cbfb890244fd451a497fe6ecf9aa90d19a2d441162f7eaa7ce3fc4e8"
            "9fd4e76b7ae585be2a2c0fd6fb246b8ac8d58bcb585634e30c9168a434786fe5e0b74bfe8187b47ac091aa571ffea0a8"
            "64cb906d0e28c77a00e8cd8f6aba4317a8cc7bf32ce566bd1ef80c64de041728abe087bee6cadd0b7062bde5ceef308a"
            "23bd1ccc154fd0c3a26110df6193464fc0d24ee189aea8979d722170ba945fdcce9b1b4b63349980f3a92dc2e5418c54"
            "d38a862916926b3f9ca270a8cf40dfb9772bfbdd9a3e0e0892369c18249211ba857f35963d0e05d8da98f1aa0c6bba58"
            "f47487b8f663e395091275f82941830b050b260e4767ce2fa903e75ff8970c98bfb3a08d6db91ab1746c86420ee2e909"
            "bf681cac173697135983c3594b2def673736220452fde4ddec867d40ff42dd3da36c84e3e52508b891a00f50b4f62d11"
            "2edb3b6b6cc3dbd546ba10f36b03f06c0d82aeec3b25e127af545fac28e1613a0517a6095ad18a98ab79f68801e05c17"
            "5e15bae21f821e80c80ab4fdec6fb34ca315e194502b8f3dcf7892b511aee45060e3994cd15e003861bc7220a2babd7b"
            "40eda03382548a34a7110f9b1779bf3ef6011361611e6bc5c0dc851e1509de1a"
        ),
        "sig": (
            "6fef8bf9bc182cd8cf7ce45c7dcf0e6f3e518ae48f06f3c670c649ac737a8b8119a34d51641785be151a697ed7825fdf"
            "ece82865123445eab03eb4bb91cecf4d6951738495f8481151b62de869658573df4e50a95c17c31b52e154ae26a04067"
            "d5ecdc1592c287550bb982a5bb9c30fd53a768cee6baabb3d483e9f1e2da954c7f4cf492fe3944d2fe456c1ecaf08403"
            "69e33fb4010e6b44bb1d721840513524d8e9a3519f40d1b81ae34fb7a31ee6b7ed641cb16c2ac999004c2191de020145"
            "7523f5a4700dd649267d9286f5c1d193f1454c9f868a57816bf5ff76c838a2eeb616a3fc9976f65d4371deecfbab2936"
            "2caebdff69c635fe5a2113da4d4d8c24f0b16a0584fa05e80e607c5d9a2f765f1f069f8d4da21f27c2a3b5c984b4ab24"
            "899bef46c6d9323df4862fe51ce300fca40fb539c3bb7fe2dcc9409e425f2d3b95e70e9c49c5feb6ecc9d43442c33d50"
            "003ee936845892fb8be475647da9a080f5bc7f8a716590b3745c2209fe05b17992830ce15f32c7b22cde755c8a2fe50b"
            "d814a0434130b807dc1b7218d4e85342d70695a5d7f29306f25623ad1e8aa08ef71b54b8ee447b5f64e73d09bdd6c3b7"
            "ca224058d7c67cc7551e9241688ada12d859cb7646fbd3ed8b34312f3b49d69802f0eaa11bc4211c2f7a29cd5c01ed01"
            "a39001c5856fab36228f5ee2f2e1110811872fe7c865c42ed59029c706195d52"
        ),
    },
    {
        "name": "RSABSSA-SHA384-PSSZERO-Deterministic",
        "msg_prefix": "",
        "salt": "",
        "encoded_msg": (
            "159499b90471b496c2639ec482e99feaba525c0420c565d17dc60c1bb1f47703f04436cceaa8f69811e1bf8546fa9712"
            "26c9e71421b32b571ed5ea0e032269d4219b4404316eb17a58f277634aeed394b7f3888153b5bb163e40807e605dafdd"
            "1789dd473b0846bdcb6524417bc3a35366fab4261708c0e4b4beba07a1a64bbccb4b1ac215d1350a50a501e8e9661202"
            "8b535ad731abf1f117ee07d07a4de9cef3d70f5845ba84c29d5d92c6e66a1f9489a5f527b846825360fd6e90f40ed041"
            "c682e489f3acde984a3ea580181418c1d15017af2657bc4b70485cdc0f1ebc3693e0d70a5d01f37ff640993fa071274f"
            "b9ee44e0c24dcb58ffa21a9a6540d87f24379beaafcc3b4bd42c45ec6820e03738ce98bea11c71685f31db63429fab86"
            "58bdb816f1ecccb1888f2402de0bd2f0f9646decdcad4c11b41428eec1ed25f2a86d43bb04f95726bfbd98ea34ca091b"
            "7adbabd0e28f17fa0345b89542d23c3530554987508a23641bd4f9e52962b0bee3ac9ffe005322d26a39941c58477743"
            "00411c69635f96903e8d593530908bd92a4fa6a2d52f88073a647a4b3894b7e4ebb80699e60227397bfa93f41b1c97e1"
            "07b632f68e70409372ead2f072c11cf99be4486fcbf763dde28ee156db26cd358a69fcb79644f1f2fcc166f41a4c80f5"
            "851ee08be051f14b601418d6e56e61733b9b210c6bef17edac121a754d19b9bc"
        ),
        "inv": (
            "55f2053e9a4309ac61ac4da7f3a314e626f362e95f30337962d12f08b343165c8dea34d7812dc2dcb227cfa8de49bca5"
            "7880ac55f6d77b37ed83a32eb33656ddf0cde29761aef9f86bd758280b3403a63b466831cba4c97e17e9a11e4139f9d8"
            "4e5912b017eafbafdbb3ae59a1424feae6914eb1bf20922c6db5da8a538752b3b662ae15cae7beac9a0362b8836001c5"
            "7b0c5167dceb9a66e6ab6a90e9898646b4274c3662e4316926c4da7caf5aeff611934b70581280ec68fb2ce04c5681ef"
            "95b086b7289afae8ecd669325659791853a9f4c0b784f6f60b212c3b39754d5539e3671d7930d1272e82b3853b6583a8"
            "3d9ff70c00ce1938c05eccee531cb075564059b2749e84b45dff7d179c69c86c5d1870aeffd6281d099838a3a988ff9e"
            "2684f6cc896b5326275309187d9e3558163131e4d247c2ec8317a2c09f8079d32db8241c869bc5f773722ed8e68bfa5c"
            "518d20b955abf02103fce1a025149b14670fdfc8a3f0089516db047f86b9be626ff44989d6fcc162c9570da5b862b473"
            "04eca2aceba4dedd6a672458aae779004fe116009600a6a52eb6161a3d09fda09963b56f2870a150df7183bfa03ce735"
            "513e637631fb4f980657a8cdb953b2156594607f8ebf7de6999626197072afd7ff60a5d2f782dabe026e0f298df141b8"
            "a276aaf7202d959088d7721786b04c79e45c807eb46fcf3a94031ef351aff644"
        ),
        "blinded_msg": (
            "0c86f078fe8fd2ea6b4e120d3fef7555701a7c6b7bd5606a7fb2ef2769d119f2639477a7904984d67f0ecf419059aac5"
            "8041977871d8da253a1aee14cde49cfb919f502f4d79d56d473a95f450982ad83398c1f3dd3a3342a18df9e81447998e"
            "ae6c7f9de94148a30de0846fc2402b17b2dfe233c450ba41f141ec14b27bf4e7d79a5c0fa23ad64c2d2fa33691a3048d"
            "835f7e477ecba458e4d58f8dbbcfec2a484e1442ab4b266cfc610fec95f6258ef137590254931dea30f58e96a64cef7a"
            "ca013cb037259d4dec8a2298d3e2ce96c75a10f39dcdfe7e90eba200c73fc3f5fbbdc4d50d33990559504d0ddb4fe504"
            "07fc21321128f72866c780d1412f20d4788ad0ebc2077dca4ae87108e416c3510609867196f4fbb69ff6c3a4c0249e3d"
            "6bcf157636666a0e17d8dba9034d9875e40bbff075b0a936acd75baf15179042959d6b27f8e233b60db93a2abce81f47"
            "e259f76b5a68d58c21fd8ccd7e102fc9292ec5a1bad8618a94f09ca6a58b1c5c7062fb17bd62035d898b76ead5f52a98"
            "69d5b6fbbbf5cd07bc3c35adbff4f03949fe32b455cd5b3de07859d65045b72fb1f4a0ab5c80a27a60b57ebd9e0b1737"
            "78d3be592e74cdc6a9ffa147cbb021a87b9a525bc9135114d4daacf0b111773551474ea98493ed8562dac1c9e6398ada"
            "60573ff550a01aa4468fd493fb69b3a98ab3790fc7f71ef5dfa3f1979ebe35af"
        ),
        "blind_sig": (
            "5ca77254ce107e6e6eedcf8ca03e08d4e92eeb0f4f08b2a2e7fb69da2f5db95f2167ce58a861e45a5cac1bf7d3df3edd"
            "64a2802bb5c16ceb62b2f5a0355c0d0f6d8270b658fa26e86afc18a88e91b0ec07e813d50ed4fb20376bf8470179a3a9"
            "7d5a29f9f9fe931d6bff233c45d62cd91cdb9a692cda309fad962fd9f7f19f89cc48bc75f9b521aeca21921330c7e91f"
            "f7ff2af6e62fe3112f7ec675e866c5961556a1796f2fd4707dd9fcde702caf003b5acfde1cd97bc5d2a63d126ac0587b"
            "f8ed6a3064d20dbdef9e207423e678f36e516e4c2696cc74f0a74be4c3ddaaf6cdbc95c9d58d930f0f4e00dfa2bf5d0a"
            "333964ec03226073030b9b78210d3160ec2722abf3c01efa1636a28c6c5ac9d14913537322ee42d26ab26518ec2af032"
            "02ea0e190a4790b7a8951be98313000c62d1fe0ea05647c451348f97ef5ced6c6e83303aececcc508fcc8f18f7751e05"
            "0f9f7a562f45b0d03159486d067ab4b3df1b0f270d009436f0305640929a2b61cfeef24a2e39a9a622c9d9d9e2c99245"
            "ea415243f472b226e068ebba7624ccf012b86b21d80cb2e3b718224b2f7b638a16b7665a1a493b014dd3d0f7b97ca290"
            "665b1f0972bc4a7d4051e843182771b6258d9d63f919fde109f8487f443ea54518c053acfbf7c0cfe60435b6966d42c0"
            "34cf6ad3be2281fa2bf1a90f1d2cba55643e9ae37065a7534f53402e6f4c2a3a"
        ),
        "sig": (
            "4454b6983ff01cb28545329f394936efa42ed231e15efbc025fdaca00277acf0c8e00e3d8b0ecebd35b057b8ebfc14e1"
            "a7097368a4abd20b555894ccef3d1b9528c6bcbda6b95376bef230d0f1feff0c1064c62c60a7ae7431d1fdfa43a81eed"
            "9235e363e1ffa0b2797aba6aad6082fcd285e14fc8b71de6b9c87cb4059c7dc1e96ae1e63795a1e9af86b9073d1d848a"
            "ef3eca8a03421bcd116572456b53bcfd4dabb0a9691f1fabda3ed0ce357aee2cfee5b1a0eb226f69716d4e011d96eede"
            "5e38a9acb531a64336a0d5b0bae3ab085b658692579a376740ff6ce69e89b06f360520b864e33d82d029c808248a19e1"
            "8e31f0ecd16fac5cd4870f8d3ebc1c32c718124152dc905672ab0b7af48bf7d1ac1ff7b9c742549c91275ab105458ae3"
            "7621757add83482bbcf779e777bbd61126e93686635d4766aedf5103cf7978f3856ccac9e28d21a850dbb03c81112861"
            "6d315d717be1c2b6254f8509acae862042c034530329ce15ca2e2f6b1f5fd59272746e3918c748c0eb810bf76884fa10"
            "fcf749326bbfaa5ba285a0186a22e4f628dbf178d3bb5dc7e165ca73f6a55ecc14c4f5a26c4693ce5da032264cbec319"
            "b12ddb9787d0efa4fcf1e5ccee35ad85ecd453182df9ed735893f830b570faae8be0f6fe2e571a4e0d927cba4debd368"
            "d3b4fca33ec6251897a137cf75474a32ac8256df5e5ffa518b88b43fb6f63a24"
        ),
    },
]


# ---- keys


@functools.cache
def vector_key() -> rsa.RSAPrivateKey:
    p, q, n, e, d = (int(x, 16) for x in (_P, _Q, _N, _E, _D))
    pub = rsa.RSAPublicNumbers(e, n)
    return rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), pub
    ).private_key()


@functools.cache
def key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def key_2049() -> rsa.RSAPrivateKey:
    """A 2049-bit modulus, which OpenSSL never generates itself (odd sizes come out one short).

    A 1025-bit prime of a 2050-bit key times a 1024-bit prime of a 2048-bit key: OpenSSL's
    primes are at least sqrt(2) * 2^(bits - 1), so the product has exactly 2049 bits.
    """
    p = key(2050).private_numbers().p
    q = key(2048).private_numbers().q
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    pub = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), pub
    ).private_key()


def pss(salt_len: int) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=salt_len)


def one_sentence(exc: pytest.ExceptionInfo[BlindRSAError]) -> str:
    text = str(exc.value)
    assert text.endswith(".") and "\n" not in text and text[0].isupper()
    return text


# ---- RFC 9474 Appendix A


def test_vector_key_is_consistent() -> None:
    n = int(_N, 16)
    assert int(_P, 16) * int(_Q, 16) == n
    assert n.bit_length() == 4096
    assert vector_key().key_size == 4096


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_rfc9474_vector(v: dict[str, str]) -> None:
    variant = b.VARIANTS[v["name"]]
    sk = vector_key()
    pk = sk.public_key()
    msg = H(_MSG)
    salt_len = variant.salt_len
    assert len(H(v["salt"])) == salt_len

    prefix = H(v["msg_prefix"]) or None
    assert (prefix is not None) == variant.randomized
    prepared = b.prepare(msg, randomized=variant.randomized, msg_prefix=prefix)
    assert prepared == H(v["msg_prefix"]) + msg

    if "encoded_msg" in v:
        assert b._emsa_pss_encode(prepared, 4095, H(v["salt"])) == H(v["encoded_msg"])

    inv = H(v["inv"])
    r = pow(int.from_bytes(inv, "big"), -1, int(_N, 16))
    blinded_msg, got_inv = b.blind(pk, prepared, salt=H(v["salt"]), r=r, salt_len=salt_len)
    assert blinded_msg == H(v["blinded_msg"])
    assert got_inv == inv

    blind_sig = b.blind_sign(sk, blinded_msg)
    assert blind_sig == H(v["blind_sig"])

    sig = b.finalize(pk, prepared, blind_sig, inv, salt_len=salt_len)
    assert sig == H(v["sig"])
    b.verify(pk, prepared, sig, salt_len=salt_len)
    b.verify_python(pk, prepared, sig, salt_len=salt_len)  # the RFC's steps written out agree
    pk.verify(sig, prepared, pss(salt_len), hashes.SHA384())  # an ordinary RSASSA-PSS signature

    with pytest.raises(BlindRSAError):
        b.verify(pk, msg + b"!", sig, salt_len=salt_len)
    with pytest.raises(BlindRSAError):
        b.verify(pk, prepared, sig, salt_len=48 - salt_len)  # PSS vs PSSZERO do not mix


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_rfc9474_vector_through_variant(v: dict[str, str]) -> None:
    variant = b.VARIANTS[v["name"]]
    sk = vector_key()
    pk = sk.public_key()
    prepared = variant.prepare(H(_MSG), msg_prefix=H(v["msg_prefix"]) or None)
    r = pow(int(v["inv"], 16), -1, int(_N, 16))
    blinded_msg, inv = variant.blind(pk, prepared, salt=H(v["salt"]), r=r)
    sig = variant.finalize(pk, prepared, variant.blind_sign(sk, blinded_msg), inv)
    assert sig == H(v["sig"])
    variant.verify(pk, prepared, sig)


def test_variants_are_the_rfc_ones() -> None:
    assert set(b.VARIANTS) == {v["name"] for v in VECTORS}
    pss_randomized = b.Variant("RSABSSA-SHA384-PSS-Randomized", 48, True)
    pss_deterministic = b.Variant("RSABSSA-SHA384-PSS-Deterministic", 48, False)
    assert pss_randomized == b.RSABSSA_SHA384_PSS_RANDOMIZED
    assert pss_deterministic == b.RSABSSA_SHA384_PSS_DETERMINISTIC
    assert b.RSABSSA_SHA384_PSSZERO_RANDOMIZED.salt_len == 0
    assert not b.RSABSSA_SHA384_PSSZERO_DETERMINISTIC.randomized


# ---- interop with cryptography's RSA-PSS


@pytest.mark.parametrize("salt_len", [0, 48])
def test_cryptography_signatures_verify_here(salt_len: int) -> None:
    sk = key(2048)
    msg = b"made by OpenSSL"
    sig = sk.sign(msg, pss(salt_len), hashes.SHA384())
    b.verify(sk.public_key(), msg, sig, salt_len=salt_len)
    with pytest.raises(BlindRSAError):
        b.verify(sk.public_key(), msg + b".", sig, salt_len=salt_len)


def test_odd_modulus_length_round_trips() -> None:
    """A 2049-bit modulus makes emLen one byte shorter than k: the corner of EMSA-PSS."""
    sk = key_2049()
    pk = sk.public_key()
    assert pk.public_numbers().n.bit_length() == 2049
    prepared = b.prepare(b"corner", randomized=True)
    blinded_msg, inv = b.blind(pk, prepared)
    assert len(blinded_msg) == len(inv) == 257
    sig = b.finalize(pk, prepared, b.blind_sign(sk, blinded_msg), inv)
    pk.verify(sig, prepared, pss(48), hashes.SHA384())
    b.verify(pk, prepared, sig)
    b.verify(pk, b"other", sk.sign(b"other", pss(48), hashes.SHA384()))


def test_representative_above_em_len_is_refused() -> None:
    """RFC 8017 I2OSP(m, emLen) must fail, not truncate, when m has a byte above emLen.

    With a 2049-bit n, emLen is 256 bytes, so m = 2^2048 + EM is a possible RSA value whose low
    256 bytes are a perfectly valid encoding; signing it raw must still not verify.
    """
    sk = key_2049()
    pk = sk.public_key()
    n, d = pk.public_numbers().n, sk.private_numbers().d
    msg = b"truncation"
    for i in range(200):
        em = b._emsa_pss_encode(msg, 2048, i.to_bytes(48, "big"))
        m = (1 << 2048) + int.from_bytes(em, "big")
        if m < n:
            break
    else:
        pytest.fail("no salt gave an in-range representative")
    honest = pow(int.from_bytes(em, "big"), d, n).to_bytes(257, "big")
    b.verify(pk, msg, honest)
    forged = pow(m, d, n).to_bytes(257, "big")
    with pytest.raises(BlindRSAError):
        b.verify(pk, msg, forged)
    with pytest.raises(InvalidSignature):
        pk.verify(forged, msg, pss(48), hashes.SHA384())


# ---- protocol properties


def test_blinding_hides_the_message() -> None:
    pk = key(2048).public_key()
    prepared = b.prepare(b"same", randomized=False)
    assert b.blind(pk, prepared)[0] != b.blind(pk, prepared)[0]


def test_blind_sign_is_raw_rsa_despite_base_blinding() -> None:
    sk = key(2048)
    blinded_msg, _ = b.blind(sk.public_key(), b"x")
    s = b.blind_sign(sk, blinded_msg)
    assert s == b.blind_sign(sk, blinded_msg)
    d, n = sk.private_numbers().d, sk.public_key().public_numbers().n
    assert int.from_bytes(s, "big") == pow(int.from_bytes(blinded_msg, "big"), d, n)


def test_tampering_is_caught() -> None:
    sk = key(2048)
    pk = sk.public_key()
    prepared = b.prepare(b"pay 1", randomized=True)
    blinded_msg, inv = b.blind(pk, prepared)
    blind_sig = b.blind_sign(sk, blinded_msg)
    bad = bytes([blind_sig[0] ^ 1]) + blind_sig[1:]
    with pytest.raises(BlindRSAError) as exc:
        b.finalize(pk, prepared, bad, inv)
    assert "does not verify" in one_sentence(exc)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_n = other.public_key().public_numbers().n
    foreign = (int.from_bytes(blinded_msg, "big") % other_n).to_bytes(256, "big")
    with pytest.raises(BlindRSAError):  # signed by another key of the same size
        b.finalize(pk, prepared, b.blind_sign(other, foreign), inv)
    sig = b.finalize(pk, prepared, blind_sig, inv)
    with pytest.raises(BlindRSAError):
        b.verify(pk, prepared, sig[:-1] + bytes([sig[-1] ^ 0x80]))


def test_random_r_that_is_not_invertible_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    sk = vector_key()
    p = int(_P, 16)
    draws = iter([p - 1, 12345])  # randbelow(n - 1) + 1: first r = p (no inverse), then 12346
    monkeypatch.setattr(secrets, "randbelow", lambda _n: next(draws))
    _, inv = b.blind(sk.public_key(), b"m", salt=bytes(48))
    assert int.from_bytes(inv, "big") == pow(12346, -1, int(_N, 16))


def test_fault_in_signing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    sk = key(2048)
    blinded_msg, _ = b.blind(sk.public_key(), b"m")
    real = b._rsasp1_crt
    monkeypatch.setattr(b, "_rsasp1_crt", lambda numbers, m: real(numbers, m) ^ 2)
    with pytest.raises(BlindRSAError) as exc:
        b.blind_sign(sk, blinded_msg)
    assert "own check" in one_sentence(exc)


# ---- refusals


def test_error_is_invalid_input() -> None:
    assert issubclass(BlindRSAError, InvalidInput)


def test_small_keys_are_refused_everywhere() -> None:
    sk = key(1024)
    pk = sk.public_key()
    calls: list[Callable[[], object]] = [
        lambda: b.blind(pk, b"m"),
        lambda: b.blind_sign(sk, bytes(128)),
        lambda: b.finalize(pk, b"m", bytes(128), bytes(128)),
        lambda: b.verify(pk, b"m", bytes(128)),
    ]
    for call in calls:
        with pytest.raises(BlindRSAError) as exc:
            call()
        assert "1024 bits" in one_sentence(exc) and "2048" in str(exc.value)


def test_bad_lengths_and_ranges() -> None:
    sk = vector_key()
    pk = sk.public_key()
    n = int(_N, 16)
    k = 512
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: b.prepare(b"m", randomized=True, msg_prefix=bytes(31)), "32 bytes, not 31"),
        (lambda: b.prepare(b"m", randomized=False, msg_prefix=bytes(32)), "randomized"),
        (lambda: b.blind(pk, b"m", salt=bytes(47)), "48 bytes, not 47"),
        (lambda: b.blind(pk, b"m", salt_len=-1), "negative"),
        (lambda: b.blind(pk, b"m", salt_len=k), "does not fit"),
        (lambda: b.blind(pk, b"m", r=0), "between 1"),
        (lambda: b.blind(pk, b"m", r=n), "between 1"),
        (lambda: b.blind(pk, b"m", r=int(_Q, 16)), "no inverse"),
        (lambda: b.blind_sign(sk, bytes(k - 1)), f"{k} bytes, not {k - 1}"),
        (lambda: b.blind_sign(sk, n.to_bytes(k, "big")), "out of range"),
        (lambda: b.blind_sign(sk, b"\xff" * k), "out of range"),
        (lambda: b.finalize(pk, b"m", bytes(k + 1), bytes(k)), "blind signature must be"),
        (lambda: b.finalize(pk, b"m", bytes(k), bytes(3)), "inverse must be"),
        (lambda: b.finalize(pk, b"m", n.to_bytes(k, "big"), bytes(k)), "out of range"),
        (lambda: b.finalize(pk, b"m", bytes(k), bytes(k)), "inverse is out of range"),
        (lambda: b.finalize(pk, b"m", bytes(k), n.to_bytes(k, "big")), "inverse is out of range"),
        (lambda: b.verify(pk, b"m", bytes(10)), f"{k} bytes, not 10"),
        (lambda: b.verify(pk, b"m", n.to_bytes(k, "big")), "out of range"),
        (lambda: b.verify(pk, b"m", bytes(k)), "does not verify"),
    ]
    for call, words in cases:
        with pytest.raises(BlindRSAError) as exc:
            call()
        assert words in one_sentence(exc), (words, str(exc.value))


# ---- property tests (2048-bit key, generated once)

EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GARBAGE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@EXAMPLES
@given(msg=st.binary(max_size=200), variant=st.sampled_from(sorted(b.VARIANTS.values(), key=str)))
def test_round_trip(msg: bytes, variant: b.Variant) -> None:
    sk = key(2048)
    pk = sk.public_key()
    prepared = variant.prepare(msg)
    assert prepared.endswith(msg) and len(prepared) == len(msg) + 32 * variant.randomized
    blinded_msg, inv = variant.blind(pk, prepared)
    assert len(blinded_msg) == len(inv) == 256
    sig = variant.finalize(pk, prepared, variant.blind_sign(sk, blinded_msg), inv)
    variant.verify(pk, prepared, sig)
    b.verify(pk, prepared, sig, salt_len=variant.salt_len)
    pk.verify(sig, prepared, pss(variant.salt_len), hashes.SHA384())
    if variant.salt_len:  # cryptography's PSS verify rejects the same tampering
        with pytest.raises(InvalidSignature):
            pk.verify(sig, prepared + b"x", pss(48), hashes.SHA384())


_garbage = st.one_of(st.binary(min_size=256, max_size=256), st.binary(max_size=300))


@GARBAGE
@given(data=_garbage)
def test_blind_sign_garbage(data: bytes) -> None:
    sk = key(2048)
    try:
        out = b.blind_sign(sk, data)
    except BlindRSAError:
        return
    assert len(out) == 256  # any in-range 256-byte value is a legitimate blinded message


@GARBAGE
@given(msg=st.binary(max_size=64), blind_sig=_garbage, inv=_garbage)
def test_finalize_garbage(msg: bytes, blind_sig: bytes, inv: bytes) -> None:
    with pytest.raises(BlindRSAError):
        b.finalize(key(2048).public_key(), msg, blind_sig, inv)


@GARBAGE
@given(msg=st.binary(max_size=64), sig=_garbage, salt_len=st.sampled_from([0, 48]))
def test_verify_garbage(msg: bytes, sig: bytes, salt_len: int) -> None:
    with pytest.raises(BlindRSAError):
        b.verify(key(2048).public_key(), msg, sig, salt_len=salt_len)
